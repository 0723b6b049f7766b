"""Find the device, pick the dtype, load a HuggingFace model directory with transformers."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

from mxn.chips.detect import cpu_model

log = logging.getLogger("mxn.local")
# Models come from local directories only; never let transformers reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# transformers builds models under process-wide state (meta-device init, default dtype): two loads at
# once in two threads can leave one model with meta tensors. Loads take turns, and so do the imports: its
# lazy module, imported from two threads at once, can fail one of them ("cannot import name
# 'AutoModelForCausalLM'").
LOAD_LOCK = threading.Lock()


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def detect_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():  # also true on ROCm builds, where torch.version.hip is set
        return torch.device("cuda")
    return torch.device("cpu")


def chip_of(device: torch.device) -> str:
    """The chip type id (SPEC §1) of a torch device."""
    if device.type == "cuda":
        return "amd" if getattr(torch.version, "hip", None) else "nvidia"
    if device.type == "npu":
        return "ascend"
    return "cpu"


def detect_chip() -> str:
    return chip_of(detect_device())


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on accelerators; fp32 on the CPU unless asked (bf16 is faster on CPUs with AVX-512 BF16)."""
    if requested and requested != "auto":
        dtype = getattr(torch, requested, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype '{requested}'")
        return dtype
    return torch.bfloat16 if device.type != "cpu" else torch.float32


def hardware(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What this engine runs on, for the deployment's hardware disclosure."""
    info: dict[str, Any] = {
        "engine": "mxn-local",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(chip_model=props.name, count=1, memory_gb=round(props.total_memory / 2**30, 1))
        info["driver"] = torch.version.hip or torch.version.cuda
    else:
        info.update(chip_model=cpu_model(), count=1, threads=torch.get_num_threads())
    return info


def load_causal_lm(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    with LOAD_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        model.to(device).eval()
    return model, tokenizer


def load_encoder(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    with LOAD_LOCK:
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModel.from_pretrained(path, dtype=dtype)
        model.to(device).eval()
    return model, tokenizer
