from __future__ import annotations

import base64
import gzip
import hashlib
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public as openai_public

import mxn.tokens as tokens
from mxn.tokens import Tokenizer, encodings, get_tokenizer, known_encodings, ranks, resolve

DATA_DIR = Path(tokens.__file__).with_name("data")
QWEN_RANK_FILE = ranks.package_file("dashscope", "resources", "qwen.tiktoken")
IM_START, IM_END = 151644, 151645

# The OpenAI cookbook's example ("How to count tokens with tiktoken"): 129 prompt tokens for
# gpt-4-0613 (cl100k_base) and 124 for gpt-4o (o200k_base).
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth "
        "to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


def _tiktoken_definition(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[str]]:
    """tiktoken's own constructor for `name`, with its download replaced by our ranks.

    Returns the definition dict and the expected_hash values tiktoken would have verified.
    """
    hashes: list[str] = []
    table = ranks.mergeable_ranks(encodings.DEFS[name].rank_file)

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        hashes.append(str(expected_hash))
        return table

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", lambda **kw: table)
    return openai_public.ENCODING_CONSTRUCTORS[name](), hashes


# --- OpenAI encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ids"),
    [
        ("tiktoken:cl100k_base", [15339, 1917]),
        ("tiktoken:o200k_base", [24912, 2375]),
        ("tiktoken:r50k_base", [31373, 995]),
        ("tiktoken:gpt2", [31373, 995]),
        ("tiktoken:p50k_base", [31373, 995]),
        ("tiktoken:p50k_edit", [31373, 995]),
        ("cl100k_base", [15339, 1917]),
        ("TikToken:O200K_BASE", [24912, 2375]),
    ],
)
def test_known_ids(spec: str, ids: list[int]) -> None:
    tok = get_tokenizer(spec)
    assert tok.encode("hello world") == ids
    assert tok.count("hello world") == 2
    assert tok.decode(ids) == "hello world"
    assert tok.fallback_note is None


def test_known_encodings() -> None:
    assert known_encodings() == ["gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base"]
    assert get_tokenizer("tiktoken:cl100k_base").name == "tiktoken:cl100k_base"
    assert get_tokenizer("o200k_base").name == "tiktoken:o200k_base"


@pytest.mark.parametrize("name", known_encodings())
def test_definitions_match_tiktoken_ext(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, hashes = _tiktoken_definition(name, monkeypatch)
    enc = get_tokenizer(f"tiktoken:{name}").encoding  # type: ignore[attr-defined]
    assert enc.name == expected["name"]
    assert enc._pat_str == expected["pat_str"]
    assert enc._special_tokens == expected["special_tokens"]
    assert enc.n_vocab == expected.get("explicit_n_vocab", enc.n_vocab)
    if name != "gpt2":  # gpt2 is built from vocab.bpe/encoder.json; its ranks are r50k's (checked below)
        rank_file = encodings.DEFS[name].rank_file
        assert hashes == [hashlib.sha256(ranks.rank_file_bytes(rank_file)).hexdigest()]


def test_bundled_r50k_file_is_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    _, hashes = _tiktoken_definition("r50k_base", monkeypatch)
    raw = gzip.decompress((DATA_DIR / "r50k_base.tiktoken.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == hashes[0]
    assert hashes[0] in (DATA_DIR / "README.md").read_text()
    gpt2, r50k = (get_tokenizer(f"tiktoken:{n}").encoding for n in ("gpt2", "r50k_base"))  # type: ignore[attr-defined]
    assert gpt2._mergeable_ranks == r50k._mergeable_ranks
    assert len(r50k._mergeable_ranks) == 50256


def test_p50k_base_construction_reproduces_tiktokens_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    _, hashes = _tiktoken_definition("p50k_base", monkeypatch)
    r50k = gzip.decompress((DATA_DIR / "r50k_base.tiktoken.gz").read_bytes())
    # Built independently of the module: 24 runs of 2..25 spaces appended at ranks 50257..50280.
    extra = b"".join(b"%s %d\n" % (base64.b64encode(b" " * n), 50257 + n - 2) for n in range(2, 26))
    assert hashlib.sha256(r50k + extra).hexdigest() == hashes[0]
    assert ranks.rank_file_bytes("p50k_base") == r50k + extra


def test_p50k_has_space_run_tokens() -> None:
    p50k, r50k = get_tokenizer("tiktoken:p50k_base"), get_tokenizer("tiktoken:r50k_base")
    assert p50k.encode("  ") == [50257]
    assert r50k.encode("  ") == [220, 220]
    assert p50k.encode(" " * 25) == [50280]
    edit = get_tokenizer("tiktoken:p50k_edit")
    assert edit.encoding.encode("<|fim_prefix|>", allowed_special="all") == [50281]  # type: ignore[attr-defined]


def test_special_token_text_is_ordinary_text() -> None:
    tok = get_tokenizer("tiktoken:cl100k_base")
    ids = tok.encode("<|endoftext|>")
    assert 100257 not in ids and len(ids) > 1
    assert tok.decode(ids) == "<|endoftext|>"


@pytest.mark.parametrize(("spec", "expected"), [("tiktoken:cl100k_base", 129), ("tiktoken:o200k_base", 124)])
def test_openai_count_messages_matches_cookbook(spec: str, expected: int) -> None:
    assert get_tokenizer(spec).count_messages(COOKBOOK_MESSAGES) == expected


def test_openai_count_messages_content_forms() -> None:
    tok = get_tokenizer("tiktoken:cl100k_base")
    # 3 (reply priming) + 3 per message + role + content.
    assert tok.count_messages([{"role": "user", "content": "hello world"}]) == 3 + 3 + 1 + 2
    assert tok.count_messages([{"role": "assistant", "content": None}]) == 3 + 3 + 1
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "hello"},
    ]
    assert tok.count_messages([{"role": "user", "content": parts}]) == 3 + 3 + 1 + 2 + 1


def test_long_whitespace_run_does_not_raise() -> None:
    # tiktoken's regex engine raises on ~1M-char whitespace runs; encode() must still answer.
    tok = get_tokenizer("tiktoken:cl100k_base")
    text = "x" + " " * 1_000_000 + "x"
    with pytest.raises(ValueError):
        tok.encoding.encode(text)  # type: ignore[attr-defined]
    assert 0 < tok.count(text) < 10_000


# --- Qwen ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen", "qwen2", "qwen1.5", "Qwen2"])
def test_qwen_families(family: str) -> None:
    tok = get_tokenizer(family)
    assert tok.name == "qwen"
    assert tok.fallback_note is None
    assert get_tokenizer(None, family).name == "qwen"


def test_qwen_encoding_shape() -> None:
    enc = get_tokenizer("qwen").encoding  # type: ignore[attr-defined]
    assert len(enc._mergeable_ranks) == 151_643
    assert enc.n_vocab == 151_643 + 3 + 205
    assert enc.encode_single_token("<|im_start|>") == IM_START
    assert enc.encode_single_token("<|extra_204|>") == 151_850


def test_qwen_roundtrip_and_matches_dashscope() -> None:
    from dashscope.tokenizers.qwen_tokenizer import QwenTokenizer

    ref = QwenTokenizer(str(QWEN_RANK_FILE))
    tok = get_tokenizer("qwen")
    for text in ["你好，世界", "hello world", "Déjà vu 123456 ！？\n\n  x\tカタカナ 🚀", "e\u0301"]:
        ids = tok.encode(text)
        assert ids == ref.encode(text, allowed_special=set()), text
    assert tok.decode(tok.encode("你好，世界")) == "你好，世界"
    assert tok.count("你好，世界") < len("你好，世界") + 1


def test_qwen_user_typed_marker_is_not_special() -> None:
    tok = get_tokenizer("qwen")
    ids = tok.encode("<|im_start|>")
    assert IM_START not in ids and len(ids) > 1
    rendered = tok.count_messages([{"role": "user", "content": "<|im_start|>"}])
    plain = tok.count_messages([{"role": "user", "content": ""}])
    assert rendered == plain + len(ids)


def _chatml(turns: list[tuple[str, str]]) -> str:
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    return body + "<|im_start|>assistant\n"


def test_qwen_count_messages_equals_rendered_chatml() -> None:
    tok = get_tokenizer("qwen")
    enc = tok.encoding  # type: ignore[attr-defined]
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "你好，请介绍一下你自己。"},
        {"role": "assistant", "content": "我是通义千问。"},
        {"role": "user", "content": parts},
    ]
    expected = _chatml(
        [
            ("system", "You are a helpful assistant."),
            ("user", "你好，请介绍一下你自己。"),
            ("assistant", "我是通义千问。"),
            ("user", "a\nb"),
        ]
    )
    expected_ids = enc.encode(expected, allowed_special="all")
    assert tok.count_messages(messages) == len(expected_ids)
    assert expected_ids.count(IM_START) == 5 and expected_ids.count(IM_END) == 4

    with_system: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": None}]
    expected = _chatml([("system", "Be brief."), ("user", "")])
    assert tok.count_messages(with_system) == len(enc.encode(expected, allowed_special="all"))


def test_qwen_nfc_normalisation() -> None:
    tok = get_tokenizer("qwen")
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


# --- resolution and fallback ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["chatglm", "baichuan", "llama2", "megrez"])
def test_unknown_family_falls_back_with_note(family: str) -> None:
    tok = get_tokenizer(family)
    assert tok.name == "tiktoken:cl100k_base"
    assert tok.fallback_note == f"no tokenizer available for '{family}'; counted with tiktoken:cl100k_base"
    assert tok.encode("hello world") == [15339, 1917]
    via_family = get_tokenizer(None, family)
    assert via_family.fallback_note is not None and family in via_family.fallback_note


def test_fallback_notes() -> None:
    assert get_tokenizer(None).fallback_note == "no tokenizer specified; counted with tiktoken:cl100k_base"
    both = get_tokenizer("my-model", "chatglm")
    assert both.name == "tiktoken:cl100k_base"
    assert both.fallback_note is not None and "'my-model'" in both.fallback_note and "'chatglm'" in both.fallback_note
    via_family = get_tokenizer("my-model", "qwen2")
    assert via_family.name == "qwen"
    assert via_family.fallback_note == "no tokenizer available for 'my-model'; counted with qwen"
    assert get_tokenizer("qwen", "chatglm").fallback_note is None


@pytest.mark.parametrize("spec", ["tiktoken:nope", "tiktoken:", "tiktoken:o200k_harmony"])
def test_unknown_tiktoken_encoding_raises(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        get_tokenizer(spec)
    with pytest.raises(ValueError, match="cl100k_base"):
        get_tokenizer(None, spec)


def test_get_tokenizer_is_cached_lazy_and_thread_safe() -> None:
    resolve.clear_caches()
    first = get_tokenizer("tiktoken:o200k_base")
    assert encodings.build_encoding.cache_info().currsize == 0  # nothing loaded yet
    results: list[Tokenizer] = []
    counts: list[int] = []

    def work() -> None:
        tok = get_tokenizer("tiktoken:o200k_base")
        results.append(tok)
        counts.append(tok.count("hello world"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is first for r in results) and counts == [2] * 8
    assert encodings.build_encoding.cache_info().misses == 1


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    # An empty cache dir means tiktoken would have to download; every download path is blocked.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    # The trap works: tiktoken's own loader is caught by it.
    with pytest.raises(AssertionError, match="network"):
        tiktoken.get_encoding("cl100k_base")

    resolve.clear_caches()
    for spec in [*(f"tiktoken:{n}" for n in known_encodings()), "qwen", "chatglm"]:
        assert get_tokenizer(spec).count("hello world") == 2
    assert list(tmp_path.iterdir()) == []


# --- local paths ---------------------------------------------------------------------------------


def test_path_to_qwen_rank_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "Qwen-7B-Chat"
    model_dir.mkdir()
    shutil.copy(QWEN_RANK_FILE, model_dir / "qwen.tiktoken")
    messages = [{"role": "user", "content": "你好"}]
    for spec in (str(model_dir), str(model_dir / "qwen.tiktoken")):
        tok = get_tokenizer(spec)
        assert tok.name == str(model_dir / "qwen.tiktoken")
        assert tok.fallback_note is None
        assert tok.encode("你好，世界") == get_tokenizer("qwen").encode("你好，世界")
        assert tok.count_messages(messages) == get_tokenizer("qwen").count_messages(messages)


def test_path_to_custom_rank_file(tmp_path: Path) -> None:
    path = tmp_path / "bytes.tiktoken"
    path.write_bytes(b"".join(b"%s %d\n" % (base64.b64encode(bytes([b])), b) for b in range(256)))
    tok = get_tokenizer(str(path))
    assert tok.name == str(path)
    assert tok.encode("ab c") == [97, 98, 32, 99]
    assert tok.decode([104, 105]) == "hi"
    assert tok.count_messages([{"role": "user", "content": "hi"}]) == 3 + 3 + 4 + 2


def test_missing_path_and_tokenizer_json_without_tokenizers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = get_tokenizer(str(tmp_path / "nowhere"))
    assert missing.name == "tiktoken:cl100k_base" and missing.fallback_note is not None
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    tok = get_tokenizer(str(tmp_path))
    assert tok.name == "tiktoken:cl100k_base"
    assert tok.fallback_note == f"no tokenizer available for '{tmp_path}'; counted with tiktoken:cl100k_base"


def test_tokenizer_json_with_tokenizers(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["[UNK]", "<|im_start|>", "<|im_end|>"], show_progress=False
    )
    hf.train_from_iterator(["user assistant hello world\n"] * 20, trainer)
    hf.enable_padding(length=64)  # as some shipped tokenizer.json files do (MiniLM pads to 128)
    hf.save(str(tmp_path / "tokenizer.json"))

    tok = get_tokenizer(str(tmp_path))
    assert tok.name == str(tmp_path) and tok.fallback_note is None
    assert len(tok.encode("hello world")) == 2 and tok.count("hello world") == 2  # real length, not 64
    # Special-token text typed by a user stays ordinary text.
    assert tok._special_id("<|im_start|>") not in tok.encode("<|im_start|>")
    # ChatML without a default system prompt: [S] "user\nhello" [E] "\n" [S] "assistant\n".
    n = tok.count_messages([{"role": "user", "content": "hello"}])
    assert n == 3 + len(tok.encode("user\nhello")) + len(tok.encode("\n")) + len(tok.encode("assistant\n"))
