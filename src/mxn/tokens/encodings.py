"""tiktoken encodings built from local rank files: OpenAI's, Qwen's, and any `*.tiktoken` file."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tiktoken

from mxn.tokens.ranks import RANK_SHA256, RankTable, mergeable_ranks, parse_ranks, sha256

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Patterns copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14); a test rebuilds
# tiktoken's own definitions (with the download stubbed out) and compares them with these.
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# From Qwen's tokenization_qwen.py (identical in dashscope/tokenizers/qwen_tokenizer.py).
QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_QWEN_N_RANKS = 151_643
_QWEN_SPECIALS = {
    tok: _QWEN_N_RANKS + i
    for i, tok in enumerate([ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{n}|>" for n in range(205))])
}
# Qwen1.5/Qwen2 chat templates insert this when the conversation has no system message.
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN_FAMILIES = frozenset({"qwen", "qwen2", "qwen1.5"})


@dataclass(frozen=True)
class EncodingDef:
    pat_str: str
    special_tokens: Mapping[str, int]
    rank_file: str  # key of ranks.RANK_SHA256
    explicit_n_vocab: int | None = None


OPENAI_DEFS: dict[str, EncodingDef] = {
    "gpt2": EncodingDef(R50K_PAT, {ENDOFTEXT: 50256}, "r50k_base", 50257),
    "r50k_base": EncodingDef(R50K_PAT, {ENDOFTEXT: 50256}, "r50k_base", 50257),
    "p50k_base": EncodingDef(R50K_PAT, {ENDOFTEXT: 50256}, "p50k_base", 50281),
    "p50k_edit": EncodingDef(
        R50K_PAT,
        {ENDOFTEXT: 50256, FIM_PREFIX: 50281, FIM_MIDDLE: 50282, FIM_SUFFIX: 50283},
        "p50k_base",
    ),
    "cl100k_base": EncodingDef(
        CL100K_PAT,
        {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276},
        "cl100k_base",
    ),
    "o200k_base": EncodingDef(O200K_PAT, {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}, "o200k_base"),
}
DEFS: dict[str, EncodingDef] = {**OPENAI_DEFS, "qwen": EncodingDef(QWEN_PAT, _QWEN_SPECIALS, "qwen")}
# A local rank file identical to a known one gets that encoding's pattern and special tokens.
DEF_BY_SHA256 = {
    RANK_SHA256["r50k_base"]: "r50k_base",
    RANK_SHA256["p50k_base"]: "p50k_base",
    RANK_SHA256["cl100k_base"]: "cl100k_base",
    RANK_SHA256["o200k_base"]: "o200k_base",
    RANK_SHA256["qwen"]: "qwen",
}

# One lock for all lazy loads, so concurrent first requests parse each rank file only once.
LOAD_LOCK = threading.RLock()


@cache
def build_encoding(key: str) -> tiktoken.Encoding:
    d = DEFS[key]
    enc = tiktoken.Encoding(
        name=key,
        pat_str=d.pat_str,
        mergeable_ranks=mergeable_ranks(d.rank_file),
        special_tokens=dict(d.special_tokens),
        explicit_n_vocab=d.explicit_n_vocab,
    )
    # The Rust core has its copy of the ranks: the dict goes, and the file is read again if ever asked for.
    enc._mergeable_ranks = RankTable(d.rank_file)  # type: ignore[assignment]
    return enc


def encoding(key: str) -> tiktoken.Encoding:
    with LOAD_LOCK:
        return build_encoding(key)


def tiktoken_file_encoding(path: Path) -> tiktoken.Encoding:
    data = path.read_bytes()
    known = DEF_BY_SHA256.get(sha256(data))
    if known is not None:
        return encoding(known)
    # Unknown vocabulary: cl100k's split pattern is the usual choice for tiktoken-format files, and
    # without a config we know of no special tokens.
    return tiktoken.Encoding(
        name=path.stem, pat_str=CL100K_PAT, mergeable_ranks=parse_ranks(data, str(path)), special_tokens={}
    )
