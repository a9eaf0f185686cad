"""Presenting a report: terminal table (rich if installed, plain text otherwise), JSON file,
and a PNG bar chart (matplotlib, imported only when ``--plot`` is given).

Ratios are ``t / t_base`` of median ms/step: below 1 is faster than the base.  A WRONG row
keeps its times (so one can see what was measured) but gets no ratios.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .progress import seconds_text

COLUMNS = (
    "contender",
    "median ms",
    "min ms",
    "first step",
    "graphs/kernels",
    "peak RSS",
    "x fg eager",
    "x torch",
    "x bound",
    "check / note",
)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.0f}")


def _first_step(r: dict) -> str:
    text = seconds_text(r["first_step_s"])
    if "first_step_warm_s" in r:
        text = f"cold {text}, warm {seconds_text(r['first_step_warm_s'])}"
    elif r.get("cache", "").startswith("default"):
        text += ", default cache"
    return text


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _graphs(r: dict) -> str:
    """'graphs / kernels' compiled by this process (kernels loaded from a warm on-disk cache
    do not count: see the first-step column for the cache state)."""
    stats = r.get("stats") or {}
    return " / ".join(str(stats[k]) for k in ("graphs_compiled", "kernels_compiled") if k in stats)


def row_cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        note = _short(f"{r['status']}: {r.get('note', '')}")
        return [r["label"], "", "", "", "", "", "", "", "", note]
    mem = r.get("memory", {})
    check = r.get("check", "")
    note = check if check == "ok" else _short(f"{check}: {r.get('note', '')}")
    return [
        r["label"],
        _ms(r["median_s"]),
        _ms(r["min_s"]),
        _first_step(r),
        _graphs(r),
        f"+{mem['peak_growth_mib']:.0f} MiB" if "peak_growth_mib" in mem else "",
        _ratio(r.get("vs_fusegrad_eager")),
        _ratio(r.get("vs_torch_eager")),
        _ratio(r.get("vs_bound")),
        note,
    ]


def workload_title(name: str, w: dict) -> str:
    cost = w["cost"]
    return (
        f"{name}: {w['summary']} | {w['steps']} steps | bound {_ms(w['bound_s'])} ms "
        f"({cost['bytes'] / 1e6:.3g} MB, {cost['flops'] / 1e6:.3g} MFLOP: {cost['model']})"
    )


def header_lines(report: dict) -> list[str]:
    m, v, lim = report["machine"], report["versions"], report["limits"]
    vers = ", ".join(
        f"{k} {v[k]}" for k in ("numpy", "numba", "fusegrad", "torch", "jax") if v.get(k)
    )
    return [
        f"machine: {m.get('cpu')}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; "
        f"python {v['python']}; {vers}",
        f"limits: memory bandwidth {lim['bandwidth_GBps']:.1f} GB/s, float32 GEMM "
        f"{lim['gemm_f32_GFLOPs']:.1f} GFLOP/s ({lim['model']})",
        f"threads: {m['threads']}; torch threads this run: {report['settings']['torch_threads']}",
        f"memory: {report['settings']['memory']}; ratios are median / base (<1 = faster); "
        f"check: first and final loss within rtol {report['settings']['rtol']:g}",
    ]


def render_table(report: dict, console=None) -> None:
    """Print the table: rich on a terminal when importable, aligned plain text otherwise
    (rich would squeeze the columns into 80 characters when output is piped)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    console = console or (Console() if Console and sys.stdout.isatty() else None)
    if console is None:
        print(plain_table(report))
        return
    for line in header_lines(report):
        console.print(line, highlight=False)
    for name, w in report["workloads"].items():
        table = Table(title=workload_title(name, w), title_justify="left", show_lines=False)
        for col in COLUMNS:
            left = col in ("contender", "check / note")
            table.add_column(col, justify="left" if left else "right", overflow="fold")
        for r in report["results"]:
            if r["workload"] == name:
                cells = row_cells(r)
                style = (
                    "red" if r.get("check") == "WRONG" else ("dim" if r["status"] != "ok" else None)
                )
                table.add_row(*cells, style=style)
        console.print(table)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False)


def plain_table(report: dict) -> str:
    lines = header_lines(report)
    for name, w in report["workloads"].items():
        cells = [list(COLUMNS)] + [row_cells(r) for r in report["results"] if r["workload"] == name]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
        lines += ["", workload_title(name, w)]
        for c in cells:
            lines.append(
                "  ".join(
                    c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i])
                    for i in range(len(widths))
                )
                + "  "
                + c[-1]
            )
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=str))


def write_plot(report: dict, path: str | Path) -> str:
    """Grouped bar chart of median ms/step (log scale), one group per workload; the machine
    bound is drawn as a black tick over each group.  Returns a message for the user."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install matplotlib)"
    names = list(report["workloads"])
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(names)) + 2, 5))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys = [], []
        for i, name in enumerate(names):
            for r in report["results"]:
                if (r["workload"], r["label"]) == (name, label) and r["status"] == "ok":
                    xs.append(i - 0.4 + (j + 0.5) * width)
                    ys.append(r["median_s"] * 1e3)
                    if r.get("check") == "WRONG":
                        ax.annotate(
                            "WRONG",
                            (xs[-1], ys[-1]),
                            rotation=90,
                            fontsize=7,
                            ha="center",
                            va="bottom",
                            color="red",
                        )
        ax.bar(xs, ys, width, label=label)
    for i, name in enumerate(names):
        bound = report["workloads"][name]["bound_s"] * 1e3
        ax.hlines(
            bound,
            i - 0.45,
            i + 0.45,
            colors="black",
            linewidth=2,
            label="machine bound" if i == 0 else None,
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("ms / step (median, log scale)")
    m = report["machine"]
    ax.set_title(
        f"fusegrad benchmarks ({m.get('cpu')}, {m['cores']} cores"
        f"{', quick' if report['settings']['quick'] else ''})"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"
