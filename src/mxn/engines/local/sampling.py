"""Per-request sampling over a batch of logits: penalties, temperature, top-k, top-p, min-p, seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        # Below this, dividing the logits by the temperature overflows to inf: it is greedy in all but name.
        return self.temperature < 1e-4

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor, output_ids: list[int]
) -> torch.Tensor:
    """One row. Repetition penalty as in HF/vLLM (prompt and output); presence/frequency as OpenAI (output)."""
    if params.repetition_penalty != 1:
        seen = torch.cat([prompt_ids, torch.tensor(output_ids, dtype=torch.long, device=logits.device)]).unique()
        scores = logits[seen]
        rp = params.repetition_penalty
        logits[seen] = torch.where(scores > 0, scores / rp, scores * rp)
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(output_ids, device=logits.device), minlength=logits.shape[-1])
        counts = counts[: logits.shape[-1]].to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Draw one token from one row of (already penalised) logits."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = cumulative - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if not float(probs.sum()) > 0:  # nothing left to sample from: take the likeliest token
        return int(torch.argmax(logits))
    return int(torch.multinomial(probs, 1, generator=generator))
