"""From a catalogue's tokenizer spec (and model family) to a `Tokenizer`, with cl100k_base as the fallback."""

from __future__ import annotations

import threading
from pathlib import Path

from mxn.paths import PACKAGE_PREFIX, resolve_path
from mxn.tokens.encodings import (
    DEF_BY_SHA256,
    LOAD_LOCK,
    OPENAI_DEFS,
    QWEN_DEFAULT_SYSTEM,
    QWEN_FAMILIES,
    build_encoding,
    encoding,
    tiktoken_file_encoding,
)
from mxn.tokens.ranks import sha256
from mxn.tokens.tokenizer import HuggingFaceTokenizer, TiktokenTokenizer, Tokenizer

DEFAULT_ENCODING = "cl100k_base"
_TIKTOKEN_PREFIX = "tiktoken:"


def known_encodings() -> list[str]:
    """tiktoken encoding names accepted as ``tiktoken:<name>`` (or bare)."""
    return list(OPENAI_DEFS)


def _named(key: str, name: str | None = None, note: str | None = None) -> Tokenizer:
    """Tokenizer for a known encoding key (`encodings.DEFS`)."""
    if key == "qwen":
        # Qwen's tokenizer NFC-normalises text before encoding; so do we.
        return TiktokenTokenizer(name or "qwen", lambda: encoding(key), note, QWEN_DEFAULT_SYSTEM, nfc=True)
    return TiktokenTokenizer(name or _TIKTOKEN_PREFIX + key, lambda: encoding(key), note)


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
    known = DEF_BY_SHA256.get(sha256(path.read_bytes()))
    if known is not None:
        return _named(known, name=str(path))
    return TiktokenTokenizer(str(path), lambda: tiktoken_file_encoding(path))


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
        return HuggingFaceTokenizer(str(path), path / "tokenizer.json")
    tiktoken_files = sorted(path.glob("*.tiktoken"))
    if len(tiktoken_files) == 1:
        return _tiktoken_file_tokenizer(tiktoken_files[0])
    return None


def _resolve(spec: str) -> Tokenizer | None:
    """Tokenizer for one spec or family name, None if unavailable; ValueError for bad tiktoken names."""
    key = spec.strip().lower()
    if key.startswith(_TIKTOKEN_PREFIX):
        enc = key[len(_TIKTOKEN_PREFIX) :]
        if enc not in OPENAI_DEFS:
            raise ValueError(
                f"unknown tiktoken encoding {enc!r} in tokenizer spec {spec!r}; known: {', '.join(known_encodings())}"
            )
        return _named(enc)
    if key in QWEN_FAMILIES:
        return _named("qwen")
    if key in OPENAI_DEFS:
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


# A process-wide memo, like `re`'s of compiled patterns: keyed by catalogue specs (not by anything a request
# says), and holding tokenizers that are immutable once loaded, so every snapshot shares the loaded files.
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


def clear_caches() -> None:
    """Forget every loaded tokenizer (tests use this to force a fresh load)."""
    with _CACHE_LOCK, LOAD_LOCK:
        _CACHE.clear()
        build_encoding.cache_clear()
