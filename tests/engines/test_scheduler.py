"""The scheduler on a real (tiny, random) Qwen2 model, without HTTP."""

from __future__ import annotations

import asyncio

import pytest
import torch

from mxn.engines.local.sampling import SamplingParams
from mxn.engines.local.scheduler import DELTA, FINISH, Scheduler, Seq, new_job
from mxn.engines.local.text import Detokenizer, StopMatcher
from mxn.errors import RateLimited, ServiceUnavailable


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(config).eval()


class Bytes:
    """A stand-in tokenizer for decoding: token i is the character chr(65 + i % 26)."""

    def decode(self, ids, **_kw):  # type: ignore[no-untyped-def]
        return "".join(chr(65 + i % 26) for i in ids)


def seq(job, prompt: list[int], max_tokens: int) -> Seq:  # type: ignore[no-untyped-def]
    return Seq(
        job,
        0,
        torch.tensor(prompt),
        SamplingParams(temperature=0),
        max_tokens,
        frozenset(),
        Detokenizer(Bytes()),
        StopMatcher([]),
    )


async def run(scheduler: Scheduler, prompt: list[int], max_tokens: int) -> str:
    job = new_job()
    job.seqs.append(seq(job, prompt, max_tokens))
    scheduler.submit(job)
    text = []
    while True:
        kind, _i, payload = await job.events.get()
        if kind == DELTA:
            text.append(payload)
        elif kind == FINISH:
            return "".join(text)


async def test_batched_greedy_equals_greedy_alone_and_generate(model) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(model, torch.device("cpu"), max_batch=8)
    prompts = [[1, 2, 3], [7] * 11, [5, 9], list(range(20, 40))]
    alone = [await run(scheduler, p, 12) for p in prompts]
    together = await asyncio.gather(*(run(scheduler, p, 12) for p in prompts))
    assert list(together) == alone
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompts[1]]), max_new_tokens=12, do_sample=False)
    assert alone[1] == Bytes().decode(ref[0, len(prompts[1]) :].tolist())
    scheduler.close()


async def test_a_full_queue_answers_429(model) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(model, torch.device("cpu"), max_batch=1, max_waiting=2)
    job = new_job()
    job.seqs.extend(seq(job, [1, 2], 50) for _ in range(3))
    with pytest.raises(RateLimited) as info:
        scheduler.submit(job)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "1"
    assert scheduler.queued == 0  # a refused job leaves nothing behind
    scheduler.close()


async def test_close_lets_running_jobs_finish_refuses_new_ones_then_lets_the_model_go(model) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(model, torch.device("cpu"), max_batch=2)
    alone = await run(scheduler, [1, 2, 3], 12)
    running = asyncio.ensure_future(run(scheduler, [1, 2, 3], 12))
    await asyncio.sleep(0)  # submitted
    scheduler.close()
    with pytest.raises(ServiceUnavailable):
        await run(scheduler, [4, 5], 4)
    assert await running == alone
    await asyncio.to_thread(scheduler._thread.join, 10)
    assert not scheduler._thread.is_alive() and scheduler.model is None
