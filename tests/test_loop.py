"""mxn's event loop takes up to a batch of waiting connections each time its listening socket is ready, where uvloop
(libuv) takes one per turn of the loop: a burst of connections to a busy gateway is not set up one turn at a time."""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from mxn.loop import BATCH, Loop

CONNECTIONS = 64
TURN = 0.001  # seconds of work each turn of the busy loop takes


def _burst(loop_factory: type[asyncio.AbstractEventLoop]) -> tuple[int, int]:
    """(connections made, turns of the loop from the first to the last) for a burst against a busy loop."""

    async def run() -> tuple[int, int]:
        made: list[int] = []
        turns = 0
        all_made = asyncio.Event()

        class Noted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(turns)
                if len(made) == CONNECTIONS:
                    all_made.set()

        async def busy() -> None:
            nonlocal turns
            while True:
                until = time.monotonic() + TURN
                while time.monotonic() < until:
                    pass
                turns += 1
                await asyncio.sleep(0)

        loop = asyncio.get_running_loop()
        server = await loop.create_server(Noted, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        worker = asyncio.create_task(busy())
        clients = []
        try:
            for _ in range(CONNECTIONS):  # connected by the kernel; accepted when the loop gets to them
                c = socket.socket()
                c.setblocking(False)
                clients.append(c)
                c.connect_ex(("127.0.0.1", port))
            async with asyncio.timeout(10):
                await all_made.wait()
            return len(made), made[-1] - made[0]
        finally:
            worker.cancel()
            for c in clients:
                c.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run())


def test_a_burst_of_connections_is_accepted_a_batch_a_turn_of_a_busy_loop() -> None:
    made, turns = _burst(Loop)
    assert made == CONNECTIONS
    assert turns <= CONNECTIONS // BATCH + 1, f"accepted over {turns} turns of the loop"


def test_uvloop_alone_takes_one_connection_per_turn() -> None:
    """What mxn.loop is for: if uvloop stops doing this, mxn.loop can go."""
    made, turns = _burst(uvloop.Loop)
    assert made == CONNECTIONS
    assert turns >= CONNECTIONS // 2


def test_the_server_closes_its_sockets() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with socket.socket() as c:
            assert c.connect_ex(("127.0.0.1", port)) != 0

    with asyncio.Runner(loop_factory=Loop) as runner:
        runner.run(run())
