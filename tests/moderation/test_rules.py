"""The checker's promises: hits found across chunk boundaries, nothing of a hit ever let out, cuts exact."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import orjson
import pytest

from mxn.moderation.check import StreamGuard
from mxn.moderation.rules import Rules

WORDS = ["forbidden-word", "禁止词", "Secret Plan", "abcd"]
ID_NUMBER = r"\b\d{17}[\dXx]\b"


def chunked(text: str, rng: random.Random, cuts: int) -> list[str]:
    """`text` cut at `cuts` random places."""
    at = sorted(rng.sample(range(1, len(text)), cuts))
    return [text[a:b] for a, b in zip([0, *at], [*at, len(text)], strict=True)]


def stream(rules: Rules, pieces: list[str]) -> tuple[str, bool]:
    """Feed pieces as one choice of a stream; what went out, and whether it was blocked."""

    async def run() -> tuple[str, bool]:
        async with aiohttp.ClientSession() as http:
            guard = StreamGuard(rules, http)
            out = []
            for i, piece in enumerate(pieces):
                out.append(await guard.feed(0, piece, i == len(pieces) - 1))
                if guard.blocked:
                    break
            return "".join(out), guard.blocked

    return asyncio.run(run())


def test_whole_text_hits_keywords_case_insensitively_and_regexes() -> None:
    rules = Rules(WORDS, [ID_NUMBER])
    assert rules.first_hit("all is fine") is None
    assert rules.first_hit("the SECRET plan is here") == 4
    assert rules.first_hit("请不要说禁止词。") == 4
    assert rules.first_hit("id 11010519491231002X ok") == 3
    assert rules.first_hit("id 110105194912310 is too short") is None


@pytest.mark.parametrize("seed", range(20))
def test_a_hit_split_anywhere_is_cut_exactly_and_never_leaks(seed: int) -> None:
    rng = random.Random(seed)
    rules = Rules(WORDS, [ID_NUMBER])
    text = "Here is some text; the secret plan follows, and more."
    pieces = chunked(text, rng, 6)
    out, blocked = stream(rules, pieces)
    assert blocked
    assert out == "Here is some text; the "


@pytest.mark.parametrize("seed", range(10))
def test_clean_text_goes_out_whole_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    rules = Rules(WORDS, [ID_NUMBER])
    text = "abc ab secret pla? abcx 1234567890 禁止 and forbidden words, not the forbidden-wor"
    pieces = chunked(text, rng, 10)
    out, blocked = stream(rules, pieces)
    assert not blocked
    assert out == text


def test_regex_hit_across_chunks_is_cut_before_it() -> None:
    rules = Rules([], [ID_NUMBER])
    out, blocked = stream(rules, ["my id is 110105", "1949123", "1002X, ok"])
    assert blocked and out == "my id is "


def test_held_text_is_only_what_may_still_become_a_hit() -> None:
    rules = Rules(WORDS, [])
    hit, safe, _ = rules.scan("we have a secr", "", 0)
    assert hit is None and safe == len("we have a ")
    hit, safe, _ = rules.scan("nothing odd here!", "", 0)
    assert hit is None and safe == len("nothing odd here!")
    hit, safe, _ = rules.scan("nothing suspicious", "", 0)  # a trailing "s" may begin "secret plan"
    assert hit is None and safe == len("nothing suspicious") - 1


def test_empty_rules_are_empty() -> None:
    assert Rules([" ", ""], []).empty
    assert not Rules(["x"], []).empty


@pytest.mark.parametrize("seed", range(10))
def test_regex_hits_found_with_the_search_resuming_where_matches_may_still_start(seed: int) -> None:
    rng = random.Random(seed)
    rules = Rules([], [ID_NUMBER, r"[\w.+-]+@[\w-]+\.[\w.]+"])
    filler = " ".join(rng.choice(["word", "12345", "a.b", "x@", "1999"]) for _ in range(60))
    for secret in ("11010519491231002X", "someone@example.org"):
        text = f"{filler} then {secret} and more"
        pieces = chunked(text, rng, 40)
        out, blocked = stream(rules, pieces)
        assert blocked, secret
        assert text.startswith(out) and secret not in out and len(out) <= text.index(secret)


class ListStream:
    """A stream of chunks that ends without a finish_reason, as a broken-off upstream would."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for t in self.texts:
            yield {"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}

    buffered = 0

    async def aclose(self) -> None:
        pass


def test_text_held_at_the_end_of_a_stream_without_finish_reason_still_goes_out() -> None:
    from types import SimpleNamespace

    from mxn.gateway import stream
    from mxn.gateway.protocols import CHAT
    from mxn.tokens import get_tokenizer

    async def run() -> list[bytes]:
        async with aiohttp.ClientSession() as http:
            finished: list[tuple[int, str | None]] = []

            async def finish(status: int, _prompt: int, _completion: int, _endpoint: int, error: str | None) -> None:
                finished.append((status, error))

            # The stream's part of a request on its way (`pipeline.Call`): only what the stream reads.
            model = SimpleNamespace(name="m", tokenizer=get_tokenizer("tiktoken:gpt2", None))
            call = SimpleNamespace(
                protocol=CHAT,
                prepared=SimpleNamespace(prompt_tokens=1, include_usage=False),
                cell=SimpleNamespace(model=model, rules=Rules(WORDS, []), name="m@cpu"),
                state=SimpleNamespace(upstream=http),
                admission=SimpleNamespace(finish=finish),
                blocked=None,
            )
            opened = ListStream(["it is a sec", "ret"])
            endpoint = SimpleNamespace(id=1)
            events = [e async for e in stream.events(call, endpoint, opened)]  # type: ignore[arg-type]
            assert finished == [(200, None)]
            return events

    events = asyncio.run(run())
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "it is a secret" and events[-1] == b"data: [DONE]\n\n"
