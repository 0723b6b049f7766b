"""Moderation on the request path (SPEC §4): input before the call, output as it flows.

Input that fails is refused with 403 `content_filter` before anything is sent upstream. Output is cut
before the first hit: a non-stream answer says `"blocked": true` with `finish_reason: "content_filter"`;
a stream ends with a chunk that says so, then `[DONE]`. Keyword and regex rules see text across chunk
boundaries and never let part of a hit out: a stream holds back the few characters that might still
become one. A classifier sees a stream in segments of CLASSIFY_EVERY characters, so it stops a stream at
the end of the segment it flags.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson

from mxn import metrics
from mxn.errors import PermissionDenied
from mxn.moderation.rules import Classifier, Rules

log = logging.getLogger("mxn.moderation")
CLASSIFY_EVERY = 200
LOOKBEHIND = 16  # characters kept before where a regex match may start


class ContentFiltered(PermissionDenied):
    default_code = "content_filter"


async def classify(http: aiohttp.ClientSession, classifier: Classifier, text: str) -> bool:
    """True when the classifier flags the text; its failure counts as its `fail` setting says."""
    try:
        timeout = aiohttp.ClientTimeout(total=classifier.timeout)
        body, headers = orjson.dumps({"input": text}), {"content-type": "application/json"}
        async with http.post(classifier.url, data=body, headers=headers, timeout=timeout) as r:
            r.raise_for_status()
            data = orjson.loads(await r.read())
        results = data.get("results") if isinstance(data, dict) else None
        if isinstance(results, list):
            return any(isinstance(x, dict) and x.get("flagged") is True for x in results)
        return isinstance(data, dict) and data.get("flagged") is True
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        log.warning(
            "classifier %s failed (%s); failing %s",
            classifier.url,
            type(exc).__name__,
            "closed" if classifier.fail_closed else "open",
        )
        metrics.series(metrics.MODERATION, "classifier", "error").inc()
        return classifier.fail_closed


async def flagged_by_classifiers(http: aiohttp.ClientSession, rules: Rules, text: str) -> bool:
    for c in rules.classifiers:
        if await classify(http, c, text):
            return True
    return False


def request_texts(body: dict[str, Any]) -> list[str]:
    """The text a user sends: message contents (strings or text parts) and completion prompts."""
    texts: list[str] = []
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts.append(prompt)
    elif isinstance(prompt, list):
        texts.extend(p for p in prompt if isinstance(p, str))
    return texts


async def check_input(http: aiohttp.ClientSession, rules: Rules, body: dict[str, Any], cell: str) -> None:
    texts = request_texts(body)
    stage = None
    if any(rules.first_hit(t) is not None for t in texts):
        stage = "rules"
    elif rules.classifiers and await flagged_by_classifiers(http, rules, "\n".join(texts)):
        stage = "classifier"
    if stage:
        metrics.series(metrics.MODERATION, "input", stage).inc()
        log.info("input refused by moderation (%s) on %s", stage, cell)
        raise ContentFiltered("The request was refused by content moderation.", param="messages")


async def check_output(http: aiohttp.ClientSession, rules: Rules, body: dict[str, Any], chat: bool) -> None:
    """Cut each choice of a complete answer before its first hit, and mark the answer blocked."""
    for choice in body.get("choices") or ():
        holder = (choice.get("message") or {}) if chat else choice
        field = "content" if chat else "text"
        text = holder.get(field)
        if not isinstance(text, str) or not text:
            continue
        cut = rules.first_hit(text)
        if cut is None and rules.classifiers and await flagged_by_classifiers(http, rules, text):
            cut = 0
        if cut is not None:
            holder[field] = text[:cut]
            choice["finish_reason"] = "content_filter"
            body["blocked"] = True
    if body.get("blocked"):
        metrics.series(metrics.MODERATION, "output", "blocked").inc()


class StreamGuard:
    """Checks a stream's text per choice as it flows, holding back what might still become a hit."""

    def __init__(self, rules: Rules, http: aiohttp.ClientSession) -> None:
        self.rules, self.http = rules, http
        self.pending: dict[int, str] = {}  # received, not yet sent
        self.context: dict[int, tuple[str, int]] = {}  # sent text a regex may still match in, and from where
        self.unclassified: dict[int, int] = {}
        self.whole: dict[int, list[str]] = {}  # everything sent, for a classifier
        self.blocked = False

    async def feed(self, index: int, text: str, final: bool) -> str:
        """The text of this choice that may go out now; sets `blocked` (and cuts) on a hit."""
        pending = self.pending.get(index, "") + text
        context, live = self.context.get(index, ("", 0))
        hit, safe, live = self.rules.scan(pending, context, live)
        if final and hit is None and self.rules.regex is not None:
            # Nothing more will come: a partial match that never completed is no match; look for a whole one.
            m = self.rules.regex.search(context + pending, live)
            if m is not None:
                hit = max(0, m.start() - len(context))
        if hit is not None:
            self.blocked = True
            safe = hit
        elif final:
            safe = len(pending)
        out, self.pending[index] = pending[:safe], pending[safe:]
        if self.rules.classifiers and out and not self.blocked:
            seen = self.unclassified.get(index, 0) + len(out)
            self.whole.setdefault(index, []).append(out)
            if seen >= CLASSIFY_EVERY or final:
                seen = 0
                if await flagged_by_classifiers(self.http, self.rules, "".join(self.whole[index])):
                    self.blocked, out = True, ""
            self.unclassified[index] = seen
        if self.rules.regex is not None:
            # Keep what a regex may still match from, plus a few characters for lookbehinds such as \b.
            sent = context + out
            keep = max(0, min(live, len(sent)) - LOOKBEHIND)
            self.context[index] = (sent[keep:], live - keep)
        if self.blocked:
            metrics.series(metrics.MODERATION, "output", "blocked").inc()
        return out

    def held(self) -> list[int]:
        """The choices with text still held back."""
        return [i for i, p in self.pending.items() if p]


async def moderate_chunk(guard: StreamGuard, chunk: dict[str, Any], chat: bool) -> bool:
    """Replace each choice's text by what may go out; False when the chunk has nothing left to say."""
    useful = False
    for choice in chunk["choices"]:
        final = choice.get("finish_reason") is not None
        holder = (choice.get("delta") or {}) if chat else choice
        field = "content" if chat else "text"
        text = holder.get(field)
        if (isinstance(text, str) and text) or final:
            out = await guard.feed(choice["index"], text if isinstance(text, str) else "", final)
            if out or isinstance(text, str):
                holder[field] = out
            if guard.blocked:
                choice["finish_reason"] = None
        others = chat and any(v is not None for k, v in holder.items() if k != field)
        useful = useful or bool(holder.get(field)) or choice["finish_reason"] is not None or others
    return useful
