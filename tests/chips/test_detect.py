"""Chip detection against recorded outputs of each vendor's tool (no accelerator is lent here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxn.chips.detect import (
    Device,
    detect,
    parse_amd_smi_json,
    parse_npu_smi,
    parse_rocm_smi_json,
    parse_smi_csv,
    ray_resources,
)

DATA = Path(__file__).parent.parent / "data" / "chips"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_nvidia_smi_csv() -> None:
    assert parse_smi_csv(read("nvidia-smi.csv")) == [
        Device("nvidia", 0, "NVIDIA H800", 81559, 72871, 97.0),
        Device("nvidia", 1, "NVIDIA H800", 81559, 4, 0.0),
    ]


def test_rocm_smi_json() -> None:
    assert parse_rocm_smi_json(read("rocm-smi.json")) == [
        Device("amd", 0, "AMD Instinct MI300X", 196592, 13152, 37.0),
        Device("amd", 1, "AMD Instinct MI300X", 196592, 272, 0.0),
    ]


def test_amd_smi_metric_json() -> None:
    devices = parse_amd_smi_json(read("amd-smi-metric.json"))
    assert [(d.index, d.memory_mib, d.memory_used_mib, d.utilization_pct) for d in devices] == [
        (0, 196592, 283, 12.0),
        (1, 196592, 283, 0.0),
    ]


def test_npu_smi_910b_counts_hbm() -> None:
    assert parse_npu_smi(read("npu-smi-910b.txt")) == [
        Device("ascend", 0, "Ascend 910B3", 65536, 3378, 0.0),
        Device("ascend", 1, "Ascend 910B3", 65536, 61440, 86.0),
    ]


def test_npu_smi_310p_without_hbm_counts_its_memory() -> None:
    assert parse_npu_smi(read("npu-smi-310p.txt")) == [Device("ascend", 8, "Ascend 310P3", 21527, 1783, 3.0)]


def test_detect_runs_each_tool_and_always_lists_the_cpu() -> None:
    outputs = {"nvidia-smi": read("nvidia-smi.csv"), "npu-smi": read("npu-smi-910b.txt")}
    asked: list[str] = []

    def run(cmd: list[str]) -> str | None:
        asked.append(cmd[0])
        return outputs.get(cmd[0])

    devices = detect(run)
    assert [d.chip for d in devices] == ["nvidia", "nvidia", "ascend", "ascend", "cpu"]
    assert {"nvidia-smi", "amd-smi", "rocm-smi", "npu-smi"} <= set(asked)
    cpu = devices[-1]
    assert cpu.memory_mib and cpu.memory_mib > 0 and "cores" in cpu.name
    assert ray_resources(devices) == {"GPU": 2, "chip:nvidia": 2, "NPU": 2, "chip:ascend": 2, "chip:cpu": 1}


def test_this_machine_without_tools_has_only_its_cpu() -> None:
    devices = detect(lambda cmd: None)
    assert [d.chip for d in devices] == ["cpu"]
    assert ray_resources(devices) == {"chip:cpu": 1}


@pytest.mark.e2e  # runs `mxn chips` as a process
def test_mxn_chips_json() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mxn", "chips", "--json"], capture_output=True, text=True, check=True)
    body = json.loads(out.stdout)
    assert body["devices"][-1]["chip"] == "cpu" and body["ray_resources"]["chip:cpu"] == 1
    # What `ray start --resources` takes, and nothing else on stdout.
    out = subprocess.run(
        [sys.executable, "-m", "mxn", "chips", "--ray-resources"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == body["ray_resources"]
