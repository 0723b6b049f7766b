"""One task per key at a time: callers that want the same thing while it is under way share its one task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

K = TypeVar("K")
T = TypeVar("T")


def one_flight(
    flights: dict[K, asyncio.Task[T]], key: K, start: Callable[[], Coroutine[Any, Any, T]]
) -> asyncio.Task[T]:
    """`key`'s task under way in `flights`, started from `start()` if there is none; it leaves `flights` when done."""
    task = flights.get(key)
    if task is None:
        task = flights[key] = asyncio.create_task(start())
        task.add_done_callback(lambda _: flights.pop(key, None))
    return task
