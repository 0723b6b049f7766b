"""A replica that adds usage records until it is killed, printing each record's id once its `add` has returned."""

from __future__ import annotations

import asyncio
import sys

from mxn.store.db import create_engine, sessionmaker
from mxn.usage import UsageWriter, record


async def main(url: str, directory: str, fsync: str) -> None:
    writer = UsageWriter(sessionmaker(create_engine(url)), directory, interval=0.1, batch=50, fsync=fsync)
    writer.start()

    async def keep_adding() -> None:
        while True:
            row = record(
                user_id=1, key_id=2, model="m", chip="c", endpoint_id=None, route="chat", prompt_tokens=3,
                completion_tokens=4, ttft_ms=None, latency_ms=5.0, status=200, error=None, cost=7,
            )  # fmt: skip
            await writer.add(row)
            sys.stdout.write(f"{row['record_id']}\n")
            sys.stdout.flush()

    await asyncio.gather(*(keep_adding() for _ in range(8)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
