"""Tokenizers: count a text or a chat request the way a model does, over tiktoken or a `tokenizer.json`."""

from __future__ import annotations

import json
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken

from mxn.tokens.encodings import IM_END, IM_START, LOAD_LOCK

# tiktoken's regex engine gives up ("Max stack size exceeded for backtracking", a ValueError) on
# whitespace runs of ~1M characters; such text is re-encoded in pieces of at most this many chars.
CHUNK_CHARS = 100_000


def _chunks(text: str) -> list[str]:
    """Split `text` into pieces of at most CHUNK_CHARS, cutting before a whitespace character when
    possible so words keep their leading space (the count may then differ by a token or two)."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > CHUNK_CHARS:
        end = start + CHUNK_CHARS
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        cut = end if cut <= start else cut
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def text_parts(content: Any) -> list[str]:
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

    def warm(self) -> None:
        """Load now whatever counting a chat request needs (a rank table, a tokenizer file, a chat template):
        blocking, so called off the event loop, where a first request would otherwise load it."""
        self.count_messages([{"role": "user", "content": "warm"}])

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether counting a chat request needs nothing more loaded."""

    def count_messages(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
        """Prompt tokens of a chat request (the messages plus the assistant reply priming; tools as their JSON)."""
        start, end = self._special_id(IM_START), self._special_id(IM_END)
        # Templates differ in how they show tools; their schemas' JSON is most of it.
        extra = self.count(json.dumps(tools, ensure_ascii=False)) if tools else 0
        if start is not None and end is not None:
            return len(self._chatml_ids(messages, start, end)) + extra
        return self._openai_count(messages) + extra

    def _chatml_ids(self, messages: list[dict[str, Any]], start: int, end: int) -> list[int]:
        # Renders Qwen's template: <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n.
        # Only the markers we insert become special ids; each text segment between them is encoded
        # on its own, exactly as tiktoken does when encoding the rendered string with specials allowed.
        turns = [(str(m.get("role") or ""), "\n".join(text_parts(m.get("content")))) for m in messages]
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
            total += sum(self.count(t) for t in text_parts(m.get("content")))
            if m.get("name"):
                total += 1 + self.count(str(m["name"]))
        return total


class TiktokenTokenizer(Tokenizer):
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
            with LOAD_LOCK:
                if self._enc is None:
                    self._enc = self._load()
                enc = self._enc
        return enc

    @property
    def loaded(self) -> bool:
        return self._enc is not None

    def encode(self, text: str) -> list[int]:
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        enc = self.encoding
        try:
            return enc.encode(text, allowed_special=set(), disallowed_special=())
        except ValueError:
            if len(text) <= CHUNK_CHARS:
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


class HuggingFaceTokenizer(Tokenizer):
    """A `tokenizer.json` loaded with the optional `tokenizers` package."""

    def __init__(self, name: str, path: Path, fallback_note: str | None = None) -> None:
        super().__init__(name, fallback_note)
        self._path = path
        self._tok: Any = None
        self._chat: Any = None  # transformers tokenizer with a chat template, False when there is none

    @property
    def _tokenizer(self) -> Any:
        if self._tok is None:
            with LOAD_LOCK:
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

    @property
    def loaded(self) -> bool:
        return self._tok is not None and self._chat is not None

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    def _special_id(self, token: str) -> int | None:
        tid = self._tokenizer.token_to_id(token)
        return None if tid is None else int(tid)

    def count_messages(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
        """With the model's own chat template when its directory has one (what the engine will send)."""
        templated = self._templated()
        if templated is None:
            return super().count_messages(messages, tools)
        plain = [{**m, "content": "\n".join(text_parts(m.get("content")))} for m in messages]
        try:
            ids = templated.apply_chat_template(
                plain, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception:  # messages the template refuses (the engine says why); the estimate will do here
            return super().count_messages(messages, tools)
        return len(ids["input_ids"])

    def _templated(self) -> Any:
        if self._chat is None:
            with LOAD_LOCK:
                if self._chat is None:
                    self._chat = _transformers_tokenizer(self._path.parent) or False
        return self._chat or None


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
