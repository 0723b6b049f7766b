"""What the streaming moderation checker adds per chunk, with 50,000 keywords and a few regexes.

    python bench/moderation.py [--keywords 50000] [--chunks 20000] [--rounds 7]

A fixed-seed list of Chinese and English keywords (2–10 characters) and a bilingual answer cut into
chunks of 1–6 characters (about one token each) are fed through the same code a stream goes through
(`moderate_chunk` on an OpenAI chunk dict): once with the checker, once without, in alternating rounds.
None of the keywords occurs in the text, so every chunk is checked and none stops the stream: the
steady-state cost. Reports medians of the per-chunk added time; goal under 20 µs.
Writes bench/results/moderation.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from mxn import __version__
from mxn.moderation.check import StreamGuard, moderate_chunk
from mxn.moderation.rules import Rules

HAN = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里"
    "所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从"
)
LATIN = "abcdefghijklmnopqrstuvwxyz"
REGEXES = [r"\b\d{17}[\dXx]\b", r"\b1[3-9]\d{9}\b", r"[\w.+-]+@[\w-]+\.[\w.]+"]
TEXT = (
    "M×N 是一个模型即服务平台:M 个模型运行在 N 种芯片上,通过一个兼容 OpenAI 的接口对外提供服务。"
    "It routes each request to a healthy endpoint, counts tokens exactly, and compares chips fairly. "
    "用户可以在同一个提示词下比较不同芯片的首字延迟和吞吐量,也可以查看用量和费用。"
    "Streaming answers arrive token by token; the checker sees every one of them. "
)


def keywords(n: int, rng: random.Random) -> list[str]:
    """Words that are not in TEXT (so that nothing stops the stream): random strings of both scripts."""
    words: set[str] = set()
    while len(words) < n:
        alphabet = HAN if rng.random() < 0.6 else LATIN
        w = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 10)))
        if w not in TEXT.lower():
            words.add(w)
    return sorted(words)


def chunks(n: int, rng: random.Random) -> list[str]:
    out, pos = [], 0
    text = TEXT * (1 + n * 6 // len(TEXT))
    while len(out) < n:
        size = rng.randint(1, 6)
        out.append(text[pos : pos + size])
        pos += size
    return out


def make_chunk(text: str, i: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}],
    }


async def run_once(pieces: list[str], rules: Rules | None, http: httpx.AsyncClient) -> float:
    """Seconds per chunk for the whole stream: building each chunk, and checking it when rules are given."""
    guard = StreamGuard(rules, http) if rules else None
    sent = []
    start = time.perf_counter()
    for i, piece in enumerate(pieces):
        chunk = make_chunk(piece, i)
        if guard is None or await moderate_chunk(guard, chunk, True):
            sent.append(chunk)
    elapsed = time.perf_counter() - start
    if guard is not None:
        assert not guard.blocked
    return elapsed / len(pieces)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(1234)
    words = keywords(args.keywords, rng)
    pieces = chunks(args.chunks, rng)

    tracemalloc.start()
    t0 = time.perf_counter()
    rules = Rules(words, REGEXES)
    build_s = time.perf_counter() - t0
    rules_kib = tracemalloc.get_traced_memory()[0] / 1024  # Python-side only; the automaton lives in C
    tracemalloc.stop()

    keyword_only = Rules(words, [])
    with_rules, keywords_only, without = [], [], []
    async with httpx.AsyncClient() as http:
        await run_once(pieces[:1000], rules, http)  # warm-up
        for _ in range(args.rounds):
            without.append(await run_once(pieces, None, http))
            with_rules.append(await run_once(pieces, rules, http))
            keywords_only.append(await run_once(pieces, keyword_only, http))
    base = statistics.median(without)
    added = statistics.median(w - b for w, b in zip(with_rules, without, strict=True))
    added_kw = statistics.median(w - b for w, b in zip(keywords_only, without, strict=True))
    report = {
        "tool": f"mxn {__version__} bench/moderation.py",
        "settings": {"keywords": len(words), "regexes": REGEXES, "chunks": len(pieces), "rounds": args.rounds},
        "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpus": 2},
        "build_seconds": round(build_s, 3),
        "python_heap_kib_while_building": round(rules_kib),
        "baseline_us_per_chunk": round(base * 1e6, 2),
        "added_us_per_chunk": round(added * 1e6, 2),
        "added_us_per_chunk_keywords_only": round(added_kw * 1e6, 2),
        "goal_us": 20,
    }
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keywords", type=int, default=50_000)
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "moderation.json"))
    args = ap.parse_args()
    report = asyncio.run(measure(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['settings']['keywords']} keywords + {len(REGEXES)} regexes, built in {report['build_seconds']} s")
    print(f"{'':<28}{'µs per chunk':>14}")
    print(f"{'no checker (chunk only)':<28}{report['baseline_us_per_chunk']:>14.2f}")
    print(f"{'added: keywords':<28}{report['added_us_per_chunk_keywords_only']:>14.2f}")
    print(f"{'added: keywords + regexes':<28}{report['added_us_per_chunk']:>14.2f}   (goal < 20)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
