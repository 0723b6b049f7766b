"""The event loop mxn serves on: uvloop, taking a batch of waiting connections each time its listening socket is ready.

libuv accepts one connection per turn of the loop (libuv#3696). A busy gateway turns its loop once for all the
work that is ready, every few milliseconds, so a burst of new connections (a client or a balancer opening a
hundred at once) waits for as many turns before the last one is read: over a second at 128 connections, measured
with `bench/gateway_overhead.py`. Here the listening socket is read by a reader of our own, which accepts up to
`BATCH` connections each time (as asyncio's own loop does, with a smaller bound) and hands each to uvloop as an
accepted socket. The bound keeps the connections shared among `--workers` processes, which all listen on one
socket: the first to wake up would otherwise take a whole burst.

Only what uvicorn asks of a server is served this way (a TCP socket, or a host and port, without TLS); anything
else goes to uvloop as it is.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

log = logging.getLogger("mxn.loop")
BATCH = 16  # connections accepted per readiness of a listening socket, at most


class Loop(uvloop.Loop):  # type: ignore[misc]  # uvloop's Loop is untyped
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if ssl is not None or options:
            given: dict[str, Any] = {"host": host, "port": port, "sock": sock, "backlog": backlog, "ssl": ssl}
            server: asyncio.AbstractServer = await super().create_server(protocol_factory, **given, **options)
            return server
        sockets = [sock] if sock is not None else _bind(host, port, backlog)
        for s in sockets:
            s.listen(backlog)
        return Server(self, sockets, protocol_factory)


def _bind(host: str | None, port: int | None, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names, as asyncio's create_server binds them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


class Server(asyncio.AbstractServer):
    """Listening sockets whose connections go to `protocol_factory` through uvloop's transports."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sockets: Iterable[socket.socket], protocol_factory: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._factory = protocol_factory
        self._closed = asyncio.Event()
        self._connecting: set[asyncio.Task[None]] = set()
        for s in self._sockets:
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._accept, s)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                conn, _address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the next readiness tries again
                log.warning("accepting a connection failed: %s", exc)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as exc:
            conn.close()
            log.warning("a connection could not be set up: %s", exc)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def close(self) -> None:
        for s in self._sockets:
            if s.fileno() != -1:
                self._loop.remove_reader(s.fileno())
                s.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        pass  # serving from the start

    async def serve_forever(self) -> None:
        await self.wait_closed()
