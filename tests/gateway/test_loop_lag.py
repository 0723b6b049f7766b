"""The loop-lag watcher sees a step that holds the event loop."""

from __future__ import annotations

import asyncio
import time

from mxn import metrics
from mxn.gateway.state import watch_loop


def _samples() -> dict[str, float]:
    (family,) = metrics.LOOP_LAG.collect()
    return {f"{s.name}{s.labels.get('le', '')}": s.value for s in family.samples}


def test_a_blocked_loop_shows_as_lag() -> None:
    async def run() -> None:
        before = _samples()
        watcher = asyncio.create_task(watch_loop(0.01))
        await asyncio.sleep(0.05)  # some ticks on time
        time.sleep(0.2)  # noqa: ASYNC251  # a step that holds the loop: what the watcher is for
        await asyncio.sleep(0.05)
        watcher.cancel()
        after = _samples()
        assert after["mxn_event_loop_lag_seconds_count"] - before["mxn_event_loop_lag_seconds_count"] >= 3
        late = after["mxn_event_loop_lag_seconds_bucket0.1"] - before["mxn_event_loop_lag_seconds_bucket0.1"]
        counted = after["mxn_event_loop_lag_seconds_count"] - before["mxn_event_loop_lag_seconds_count"]
        assert counted - late >= 1, "one timer fired at least 0.1 s late"
        assert after["mxn_event_loop_lag_seconds_sum"] - before["mxn_event_loop_lag_seconds_sum"] >= 0.15

    asyncio.run(run())
