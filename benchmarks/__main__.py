"""Command line: ``python -m benchmarks [--only NAME[,NAME]] [--quick] [--json PATH]
[--plot PATH] [--device cpu|cuda] [--contenders KEY[,KEY]]``."""

from __future__ import annotations

import argparse
import sys

from .contenders import CONTENDERS
from .progress import make_progress
from .report import render_table, write_json, write_plot
from .runner import run_suite
from .workloads import WORKLOADS


def _names(value: str | None, known: dict, what: str) -> list[str] | None:
    if not value:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only", metavar="NAME", help="workload(s), comma-separated: " + ", ".join(WORKLOADS)
    )
    parser.add_argument(
        "--contenders",
        metavar="KEY",
        help="contender(s), comma-separated: " + ", ".join(CONTENDERS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, smaller sizes, default compile caches (< 2 min)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (matplotlib)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--plain", action="store_true", help="plain progress lines, no rich")
    parser.add_argument("--timeout", type=float, help="seconds per worker process")
    parser.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads (default: all cores)"
    )
    args = parser.parse_args(argv)

    workloads = _names(args.only, WORKLOADS, "workload")
    contenders = _names(args.contenders, CONTENDERS, "contender")
    n = len(workloads or WORKLOADS) * len(contenders or CONTENDERS)
    progress = make_progress(n, plain=args.plain)
    try:
        report = run_suite(
            workloads,
            contenders,
            quick=args.quick,
            device=args.device,
            progress=progress,
            timeout=args.timeout,
            torch_threads=args.torch_threads,
        )
    finally:
        progress.close()
    render_table(report)
    print(f"total {report['wall_s']:.0f} s")
    if args.json:
        write_json(report, args.json)
        print(f"JSON written to {args.json}")
    if args.plot:
        print(write_plot(report, args.plot))
    wrong = [r for r in report["results"] if r.get("check") == "WRONG"]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
