"""Browser-facing hardening: security headers on every response, and CORS only for the origins configured."""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mxn.config import Settings

_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# HTML (the console, error pages) loads nothing but its own files: no inline script, no other origin.
_CSP = b"default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
# FastAPI's /docs (Swagger UI) and /redoc load their bundles from this CDN and start them with an inline
# script; until they are vendored, those pages alone allow the CDN and exactly their own inline scripts.
_DOCS_CDN = "https://cdn.jsdelivr.net"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def docs_policy(html: bytes) -> bytes:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'self'; script-src 'self' {_DOCS_CDN} {hashes}; "
        # Redoc injects its styles at run time; Swagger UI's and Redoc's fonts and favicon come from elsewhere.
        f"style-src 'self' {_DOCS_CDN} https://fonts.googleapis.com 'unsafe-inline'; "
        "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https:; worker-src 'self' blob:; "
        "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    ).encode()


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers)


class SecurityHeaders:
    """A pure ASGI middleware (no BaseHTTPMiddleware: streams pass through untouched, no extra task)."""

    def __init__(self, app: ASGIApp, docs_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.docs_paths and scope["path"].removeprefix(scope.get("root_path", "")) in self.docs_paths:
            await self.app(scope, receive, _DocsPage(send))
            return

        await self.app(scope, receive, secured(send))


def secured(send: Send) -> Send:
    """`send`, with the security headers added to the response's start."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), *_ALWAYS]
            if _is_html(headers):
                headers.append((b"content-security-policy", _CSP))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_headers


class _DocsPage:
    """Holds a docs page back until its body is complete, so that its CSP can name its inline scripts."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(self.chunks)
        headers = [*self.start.get("headers", ()), *_ALWAYS]
        if _is_html(headers):
            headers.append((b"content-security-policy", docs_policy(body)))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


ANTHROPIC_HEADERS = ("x-api-key", "anthropic-version", "anthropic-beta")  # what Anthropic's SDK sends from a browser


def install(app: FastAPI, settings: Settings) -> None:
    """CORS when origins are configured (none by default: no CORS headers, preflights get 405), then headers."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "content-type", "api-key", *ANTHROPIC_HEADERS],
            expose_headers=[
                "retry-after",
                *(f"x-ratelimit-{w}-{k}" for w in ("limit", "remaining", "reset") for k in ("requests", "tokens")),
            ],
            max_age=600,
        )
    docs = (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    # Added last, so outermost: preflight answers and errors get the headers too.
    app.add_middleware(SecurityHeaders, docs_paths=frozenset(p for p in docs if p))
