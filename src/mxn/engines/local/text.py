"""Incremental detokenisation and stop strings: text leaves only when it is whole and final."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Turns a growing list of token ids into text deltas that never split a multi-byte character.

    Decodes a small window (the last few tokens) rather than the whole output every step; a window
    ending in U+FFFD is an unfinished UTF-8 sequence, held until the next token completes it.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """What is still held back at the end (an incomplete character stays as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


class StopMatcher:
    """Cuts the text at the first stop string and holds back a tail that might begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.hit = False

    def feed(self, delta: str, final: bool = False) -> str:
        """The part of the text that is now safe to send."""
        if self.hit:
            return ""
        self.text += delta
        cut = self._first_stop()
        if cut is not None:
            self.hit = True
            out, self.sent = self.text[self.sent : cut], cut
            self.text = self.text[:cut]
            return out
        end = len(self.text) if final else len(self.text) - self._held_back()
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent : end], end
        return out

    def _first_stop(self) -> int | None:
        if not self.stops:
            return None
        # A new match can start at most (longest stop - 1) characters before the unsent text.
        start = max(0, self.sent - max(len(s) for s in self.stops) + 1)
        found = [i for s in self.stops if (i := self.text.find(s, start)) != -1]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
