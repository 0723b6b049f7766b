"""Chip detection: each vendor's tool is asked, its answer parsed into `Device`s; the CPU is always there.

- NVIDIA: NVML through `nvidia-ml-py` when it is installed, else `nvidia-smi --query-gpu ... --format=csv`.
- AMD: `amd-smi metric --usage --mem-usage --json` (ROCm 6), else `rocm-smi ... --json` (older ROCm).
- Ascend: `npu-smi info` (its table; the tool has no machine-readable form).
- Iluvatar (`ixsmi`) and MetaX (`mx-smi`) ship nvidia-smi-compatible query tools; Moore Threads (`mthreads-gmi`),
  Biren and Enflame (`efsmi`) are listed by presence only, with their device count where the tool gives one.

Parsers take the tool's text, so they are tested against recorded outputs; `detect()` runs the tools that exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Ray knows GPUs (CUDA and ROCm both count as "GPU") and Ascend NPUs ("NPU"); every chip type also gets a custom
# resource of its own, so that a replica can ask for `chip:ascend` whatever Ray calls it.
RAY_NAMES = {"nvidia": "GPU", "amd": "GPU", "iluvatar": "GPU", "metax": "GPU", "ascend": "NPU"}


@dataclass(frozen=True, slots=True)
class Device:
    chip: str  # a chip type id: nvidia, amd, ascend, ..., cpu
    index: int
    name: str
    memory_mib: int | None  # total
    memory_used_mib: int | None
    utilization_pct: float | None

    def view(self) -> dict[str, Any]:
        return asdict(self)


Runner = Callable[[list[str]], str | None]


def run_tool(cmd: list[str]) -> str | None:
    """A tool's output, or None when it is not installed or fails (no driver, no device)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _number(text: str | None) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?", text or "")
    return float(m.group()) if m else None


def _int(text: str | None) -> int | None:
    value = _number(text)
    return int(value) if value is not None else None


# --- NVIDIA and the tools that speak its query language ---
SMI_QUERY = ["--query-gpu=index,name,memory.total,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]


def parse_smi_csv(text: str, chip: str = "nvidia") -> list[Device]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits`."""
    devices = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        devices.append(Device(chip, int(fields[0]), fields[1], _int(fields[2]), _int(fields[3]), _number(fields[4])))
    return devices


def nvml_devices() -> list[Device] | None:
    """NVIDIA's devices through NVML (`nvidia-ml-py`), or None when the library or the driver is missing."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound and friends
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            use = pynvml.nvmlDeviceGetUtilizationRates(handle)
            out.append(
                Device(
                    "nvidia",
                    i,
                    name.decode() if isinstance(name, bytes) else str(name),
                    int(memory.total) >> 20,
                    int(memory.used) >> 20,
                    float(use.gpu),
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()


# --- AMD ---
def parse_rocm_smi_json(text: str) -> list[Device]:
    """`rocm-smi --showproductname --showmeminfo vram --showuse --json`: one object per `cardN`."""
    data = json.loads(text)
    devices = []
    for card, info in sorted(data.items()):
        m = re.fullmatch(r"card(\d+)", card)
        if not m or not isinstance(info, dict):
            continue
        total = _int(info.get("VRAM Total Memory (B)"))
        used = _int(info.get("VRAM Total Used Memory (B)"))
        name = info.get("Card Series") or info.get("Card series") or info.get("Card model") or "AMD GPU"
        devices.append(
            Device(
                "amd",
                int(m.group(1)),
                str(name),
                total >> 20 if total is not None else None,
                used >> 20 if used is not None else None,
                _number(info.get("GPU use (%)")),
            )
        )
    return devices


def parse_amd_smi_json(text: str) -> list[Device]:
    """`amd-smi metric --usage --mem-usage --json` (ROCm 6): usage and VRAM in MB per GPU (no product name)."""
    data = json.loads(text)
    items = data if isinstance(data, list) else data.get("gpu_data", [])
    devices: list[Device] = []
    for item in items:
        asic, usage, mem = item.get("asic") or {}, item.get("usage") or {}, item.get("mem_usage") or {}
        total, used = mem.get("total_vram") or {}, mem.get("used_vram") or {}
        devices.append(
            Device(
                "amd",
                int(item.get("gpu", len(devices))),
                str(asic.get("market_name") or "AMD GPU"),
                _int(str(total.get("value")) if isinstance(total, dict) else str(total)),
                _int(str(used.get("value")) if isinstance(used, dict) else str(used)),
                _number(str((usage.get("gfx_activity") or {}).get("value", ""))),
            )
        )
    return devices


# --- Ascend ---
_NPU_FIRST = re.compile(r"^\|\s*(\d+)\s+(\S[^|]*?)\s*\|\s*(\S+)\s*\|")
_NPU_SECOND = re.compile(r"^\|\s*(\d+)(?:\s+\d+)?\s*\|\s*[0-9A-Fa-f:.]+\s*\|\s*([\d.]+)\s+(.*)\|\s*$")


def parse_npu_smi(text: str) -> list[Device]:
    """`npu-smi info`: each NPU is two table rows, `| NPU Name | Health | ... |` then `| Chip | Bus-Id | AICore(%)
    Memory-Usage(MB) HBM-Usage(MB) |`; HBM (where there is some) is the device memory, else Memory-Usage."""
    devices: list[Device] = []
    pending: tuple[int, str] | None = None
    for line in text.splitlines():
        if pending is None:
            m = _NPU_FIRST.match(line)
            if m and m.group(3) in {"OK", "Warning", "Alarm", "Critical"}:
                pending = (int(m.group(1)), m.group(2).strip())
            continue
        m = _NPU_SECOND.match(line)
        if not m:
            continue
        usages = re.findall(r"(\d+)\s*/\s*(\d+)", m.group(3))
        used, total = (int(usages[-1][0]), int(usages[-1][1])) if usages else (None, None)
        if usages and total == 0 and len(usages) > 1:  # no HBM on this model: the memory column counts
            used, total = int(usages[0][0]), int(usages[0][1])
        devices.append(Device("ascend", pending[0], f"Ascend {pending[1]}", total, used, float(m.group(2))))
        pending = None
    return devices


# --- the CPU ---
def cpu_model() -> str:
    """The CPU's model name (`AMD EPYC 9654 96-Core Processor`), or `CPU` where the system does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        return "CPU"
    return m.group(1).strip() if m else "CPU"


def cpu_device() -> Device:
    name = cpu_model()
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        total, available = _int(info.get("MemTotal")), _int(info.get("MemAvailable"))
    except OSError:
        total = available = None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = os.cpu_count() or 1
    return Device(
        "cpu",
        0,
        f"{name} × {cores} cores",
        total >> 10 if total is not None else None,
        (total - available) >> 10 if total is not None and available is not None else None,
        round(min(100.0, 100 * load / cores), 1) if load is not None else None,
    )


def detect(run: Runner = run_tool) -> list[Device]:
    """Every device this machine has, accelerators first, the CPU last."""
    found: list[Device] = []
    nvidia = nvml_devices() if run is run_tool else None
    if nvidia is None:
        text = run(["nvidia-smi", *SMI_QUERY])
        nvidia = parse_smi_csv(text) if text else []
    found += nvidia
    text = run(["amd-smi", "metric", "--usage", "--mem-usage", "--json"])
    if text:
        found += _safe(parse_amd_smi_json, text)
    else:
        text = run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showuse", "--json"])
        found += _safe(parse_rocm_smi_json, text) if text else []
    text = run(["npu-smi", "info"])
    found += parse_npu_smi(text) if text else []
    for tool, chip in (("ixsmi", "iluvatar"), ("mx-smi", "metax")):
        text = run([tool, *SMI_QUERY])
        found += parse_smi_csv(text, chip) if text else []
    return [*found, cpu_device()]


def _safe(parse: Callable[[str], list[Device]], text: str) -> list[Device]:
    try:
        return parse(text)
    except (ValueError, AttributeError, TypeError):  # a tool version whose JSON we do not know
        return []


def ray_resources(devices: list[Device]) -> dict[str, float]:
    """What a Ray node started on this machine advertises: GPU/NPU counts and a `chip:<type>` per chip type."""
    out: dict[str, float] = {}
    for d in devices:
        if d.chip == "cpu":
            continue
        if d.chip in RAY_NAMES:
            out[RAY_NAMES[d.chip]] = out.get(RAY_NAMES[d.chip], 0) + 1
        out[f"chip:{d.chip}"] = out.get(f"chip:{d.chip}", 0) + 1
    out["chip:cpu"] = 1
    return out
