"""Closing the embedded engine (its endpoint removed or changed): running requests finish, the model is freed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from mxn.engines import EndpointConfig
from mxn.engines.local.engine import CausalLM, LocalEngine
from mxn.errors import ServiceUnavailable

BODY = {"prompt": "hello", "max_tokens": 16, "temperature": 0, "ignore_eos": True}


async def test_a_closed_engine_finishes_running_requests_then_frees_its_model(model_dir: Path) -> None:
    engine = LocalEngine(EndpointConfig(1, "local", path=str(model_dir)))
    stream = await engine.open_stream("completions", BODY)
    rt = engine._loaded.result()
    assert isinstance(rt, CausalLM)
    model, scheduler = weakref.ref(rt.model), rt.scheduler
    del rt

    await engine.close()
    with pytest.raises(ServiceUnavailable) as info:
        await engine.call("completions", BODY)
    assert info.value.code == "engine_closed"
    assert engine.failed and await engine.health() is False and engine.stats() == {"loaded": False}

    chunks = [c async for c in stream]  # the request that was running when it closed still gets its whole answer
    assert chunks[-1]["usage"]["completion_tokens"] == 16
    await asyncio.to_thread(scheduler._thread.join, 10)
    assert not scheduler._thread.is_alive()
    del scheduler, stream, chunks
    gc.collect()
    assert model() is None  # nothing holds the model any more, though the engine object itself lives on


async def test_an_engine_closed_while_loading_lets_the_model_go_once_loaded(model_dir: Path) -> None:
    engine = LocalEngine(EndpointConfig(2, "local", path=str(model_dir)))
    loading = engine._loaded
    await engine.close()
    rt = await asyncio.wrap_future(loading)
    assert isinstance(rt, CausalLM)
    await asyncio.to_thread(rt.scheduler._thread.join, 10)
    assert not rt.scheduler._thread.is_alive() and rt.scheduler.model is None
