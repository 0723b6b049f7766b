"""Compiled moderation rules: a keyword automaton, one combined regex, and optional classifiers.

Keywords match case-insensitively through an Aho-Corasick automaton (pyahocorasick, in C), so a list of
tens of thousands of words costs one pass over the text. Regexes use the `regex` module, whose partial
matches tell a stream how much text might still become a hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ahocorasick
import regex

# Text a partial regex match may hold back in a stream, at most; a longer partial match is let through.
MAX_REGEX_HOLD = 256


def fold(text: str) -> str:
    """Lower case, one character for one, so that positions in the folded text are positions in the text."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower()[:1] or c for c in text)  # e.g. 'İ' lowers to two characters


@dataclass(frozen=True, slots=True)
class Classifier:
    """An external classifier: POST {"input": text}, answered in the OpenAI moderation shape."""

    url: str
    timeout: float = 0.5
    fail_closed: bool = False


class Rules:
    """Everything one deployment is checked against (the global rules plus its own)."""

    def __init__(self, keywords: Iterable[str], regexes: Iterable[str], classifiers: Iterable[Classifier] = ()) -> None:
        words = {fold(w.strip()) for w in keywords if w.strip()}
        self.keyword_count = len(words)
        self.automaton: ahocorasick.Automaton | None = None
        self.max_len = max(map(len, words), default=0)
        self.first_chars = frozenset(w[0] for w in words)
        if words:
            self.automaton = ahocorasick.Automaton()
            for w in words:
                self.automaton.add_word(w, len(w))
            self.automaton.make_automaton()
        patterns = [p for p in regexes if p]
        self.regex = regex.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.classifiers = tuple(classifiers)

    @property
    def empty(self) -> bool:
        return self.automaton is None and self.regex is None and not self.classifiers

    def first_hit(self, text: str) -> int | None:
        """Where the first keyword or regex match in a whole text starts, or None."""
        hit = self._keyword_hit(fold(text)) if self.automaton else None
        if self.regex is not None:
            m = self.regex.search(text)
            if m is not None and (hit is None or m.start() < hit):
                hit = m.start()
        return hit

    def _keyword_hit(self, folded: str) -> int | None:
        assert self.automaton is not None
        starts = [end - length + 1 for end, length in self.automaton.iter(folded)]
        return min(starts) if starts else None

    def scan(self, pending: str, context: str, live: int) -> tuple[int | None, int, int]:
        """For a stream: where a hit starts in `pending` (or None), how much of `pending` may go out now,
        and from where in `context + pending` a regex match may still start.

        `pending` is text not yet sent; `context` is sent text kept for regexes, and `live` the offset in it
        before which no regex match can start any more (the regex found neither a match nor a partial one
        there). No keyword can start in `context`: an ending that could begin one was held back.
        """
        safe = len(pending)
        hit: int | None = None
        if self.automaton is not None:
            folded = fold(pending)
            hit = self._keyword_hit(folded)
            # Hold back the longest ending that is still the beginning of some keyword.
            for s in range(max(0, len(folded) - self.max_len + 1), len(folded)):
                if folded[s] in self.first_chars and self.automaton.match(folded[s:]):
                    safe = s
                    break
        window = context + pending
        search_from, live = live, len(window)
        if self.regex is not None:
            m = self.regex.search(window, search_from, partial=True)
            if m is not None:
                start = max(0, m.start() - len(context))
                if not m.partial:
                    hit = start if hit is None else min(hit, start)
                    live = m.start()
                elif len(window) - m.start() <= MAX_REGEX_HOLD:
                    safe, live = min(safe, start), m.start()
                else:  # too long to hold back: let it go, and stop looking that far back
                    live = len(window) - MAX_REGEX_HOLD
        return hit, safe, live


class RuleCache:
    """Compiled rules kept across catalogue reloads: a reload that changed no rule set compiles nothing. Whoever
    loads catalogue snapshots owns one (`RuleCache()`) and passes it to every load."""

    def __init__(self) -> None:
        self._rules: dict[tuple[tuple[int, str], ...], Rules] = {}
        self._used: set[tuple[tuple[int, str], ...]] = set()

    def get(self, rule_sets: list[Any]) -> Rules:
        """The rules of these stored rule sets (rows with id, updated_at, keywords, regexes, classifier)."""
        key = tuple((r.id, str(r.updated_at)) for r in rule_sets)
        self._used.add(key)
        rules = self._rules.get(key)
        if rules is None:
            classifiers = [
                Classifier(c["url"], float(c.get("timeout", 0.5)), c.get("fail") == "closed")
                for r in rule_sets
                if (c := r.classifier)
            ]
            keywords = [w for r in rule_sets for w in r.keywords or ()]
            rules = self._rules[key] = Rules(keywords, [x for r in rule_sets for x in r.regexes or ()], classifiers)
        return rules

    def sweep(self) -> None:
        """Forget what the last snapshot did not ask for."""
        self._rules = {k: v for k, v in self._rules.items() if k in self._used}
        self._used = set()
