"""The results as a markdown table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from .workloads import WORKLOAD_TITLES, Settings

__all__ = ["machine_info", "markdown_table", "write_chart", "write_json"]


def machine_info(workers: int) -> dict[str, Any]:
    """What the figures depend on."""
    import psutil

    from conc_ml._system import usable_cpus

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": usable_cpus(),
        "workers": workers,
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "commit": commit,
    }


def _seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:.2f} s"


def markdown_table(results: list[dict[str, Any]], settings: Settings) -> str:
    """One table per workload: warm and first-call time, speedup over the loop, peak memory."""
    lines: list[str] = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == workload]
        lines += [
            f"**{WORKLOAD_TITLES[workload].format(**vars(settings))}** ({settings.workers} workers)",
            "",
            "| runner | warm (median) | speedup | first call | speedup | peak memory | vs loop | same result |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            parity = "yes" if row["parity"] else "NO"
            lines.append(
                f"| {row['label']} | {_seconds(row['median_s'])} | {row['speedup']:.2f}x "
                f"| {_seconds(row['first_s'])} | {row['first_speedup']:.2f}x "
                f"| {row['peak_memory_mib']:,.0f} MiB | {row['memory_ratio']:.2f}x | {parity} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_json(path: Path, results: list[dict[str, Any]], settings: Settings, machine: dict[str, Any]) -> None:
    """Machine, settings and one record per (workload, runner)."""
    payload = {"machine_info": machine, "settings": vars(settings), "benchmarks": results}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_chart(path: Path, results: list[dict[str, Any]], settings: Settings) -> None:
    """Speedup (warm and first call) and peak-memory ratio per runner, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in results))
    figure, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for column, workload in enumerate(workloads):
        rows = [r for r in results if r["workload"] == workload]
        labels = [r["label"] for r in rows]
        positions = range(len(rows))
        top, bottom = axes[0][column], axes[1][column]
        top.barh([p + 0.2 for p in positions], [r["speedup"] for r in rows], height=0.4, label="warm")
        top.barh([p - 0.2 for p in positions], [r["first_speedup"] for r in rows], height=0.4, label="first call")
        top.axvline(1, color="grey", linewidth=0.8)
        top.axvline(settings.workers, color="grey", linewidth=0.8, linestyle="--")
        top.set_yticks(list(positions), labels)
        top.invert_yaxis()
        top.set_title(WORKLOAD_TITLES[workload].format(**vars(settings)), fontsize=9)
        top.set_xlabel("speedup over the sequential loop (higher is better)")
        top.legend(fontsize=8)
        bottom.barh(list(positions), [r["memory_ratio"] for r in rows], color="tab:purple")
        bottom.axvline(1, color="grey", linewidth=0.8)
        bottom.set_yticks(list(positions), labels)
        bottom.invert_yaxis()
        bottom.set_xlabel("peak memory of the process tree / sequential's (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
