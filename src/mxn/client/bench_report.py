"""`mxn bench`'s report: DIR/bench.json, DIR/report.md and PNG plots (with the `bench` extra's matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(report: dict[str, Any], out: str | Path) -> list[Path]:
    """DIR/bench.json, DIR/report.md and the PNG plots; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = [r.pop("_samples") for r in report["results"]]
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return [out / "bench.json", out / "report.md", *plots(report, samples, out)]


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# mxn bench — {report['environment']['started']}",
        "",
        f"`{report['tool']}` against `{s['base_url']}`; {s['num_prompts']} {s['dataset']} prompts "
        f"(input {s['input_len']}, output {s['output_len']} tokens, seed {s['seed']}); "
        f"SLO: TTFT ≤ {s['slo_ttft_ms']} ms, TPOT ≤ {s['slo_tpot_ms']} ms.",
        "",
        "| cell | hardware | load | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms | output tok/s | req/s "
        "| goodput | ok | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        load = r["concurrency"] if r["concurrency"] is not None else f"{r['request_rate']}/s"
        lines.append(
            f"| {_name(r)} | {hardware_note(r.get('hardware') or {})} | {load} | {r['ttft_ms']['p50']} / "
            f"{r['ttft_ms']['p99']} | {r['tpot_ms']['p50']} / {r['tpot_ms']['p99']} | {r['itl_ms']['p50']} / "
            f"{r['itl_ms']['p99']} | {r['output_throughput']} | {r['request_throughput']} | {r['goodput']} | "
            f"{r['completed']} | {r['errors']} |"
        )
    env = report["environment"]
    lines += ["", f"Client: Python {env['python']} on {env['platform']} ({env['cpus']} CPUs).", ""]
    return "\n".join(lines)


def target_name(cell: str, endpoint: int | None) -> str:
    """What a set of result rows measures: the cell, or `cell #ID` for one endpoint of it."""
    return cell if endpoint is None else f"{cell} #{endpoint}"


def _name(row: dict[str, Any]) -> str:
    return target_name(row["cell"], row.get("endpoint"))


def hardware_note(hw: dict[str, Any]) -> str:
    """`engine version · chip_model ×count · dtype`, of whichever keys the server disclosed; else every key."""
    engine = " ".join(str(hw[k]) for k in ("engine", "engine_version", "version") if hw.get(k) is not None)
    chip = str(hw.get("chip_model") or hw.get("device") or "")
    if chip and hw.get("count") is not None:
        chip += f" ×{hw['count']}"
    parts = [p for p in (engine, chip, str(hw.get("dtype") or "")) if p]
    if not parts:  # not mxn's keys (a plain server's model entry): say what there is
        parts = [f"{k}: {v}" for k, v in hw.items() if k != "endpoint" and not isinstance(v, dict | list)]
    return " · ".join(parts).replace("|", "/") or "—"


def plots(report: dict[str, Any], samples: list[dict[str, list[float]]], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []  # plots need the `bench` extra (matplotlib); JSON and markdown are written regardless
    written = []
    # One line per target: a cell, or an endpoint of it (`cell #ID`).
    cells = list(dict.fromkeys(_name(r) for r in report["results"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for cell in cells:
        rows = [r for r in report["results"] if _name(r) == cell and r["concurrency"] is not None]
        if rows:
            ax.plot([r["concurrency"] for r in rows], [r["output_throughput"] for r in rows], marker="o", label=cell)
    ax.set(xlabel="concurrency", ylabel="output tokens/s", title="Throughput vs concurrency")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    written.append(out / "throughput.png")
    plt.close(fig)
    for metric, title in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for cell in cells:
            values = [
                v for r, smp in zip(report["results"], samples, strict=True) if _name(r) == cell for v in smp[metric]
            ]
            if values:
                ax.hist(values, bins=30, alpha=0.55, label=cell)
        ax.set(xlabel=title, ylabel="requests", title=f"{title} distribution per cell (all loads)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{metric.removesuffix('_ms')}.png", dpi=110)
        written.append(out / f"{metric.removesuffix('_ms')}.png")
        plt.close(fig)
    return written
