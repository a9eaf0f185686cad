"""Live progress while the suite runs: which workload, which contender, which phase
(compile + first step, warm-up, steady state k/n).

A full run takes minutes and a compile can sit silent for tens of seconds, so the display
must show what is going on.  With rich on a terminal it is a live panel (overall bar + current
phase with its elapsed time, finished rows printed above it); otherwise (rich missing, output
piped to a file or a test) it prints one plain line per phase change.
"""

from __future__ import annotations

import sys


def summary(row: dict) -> str:
    """One line for a finished measurement."""
    if row.get("status") != "ok":
        return f"{row['status']}: {row.get('note', '')}"
    text = f"{row['median_s'] * 1e3:.3f} ms/step (min {row['min_s'] * 1e3:.3f})"
    text += f", first step {seconds_text(row['first_step_s'])}"
    if "first_step_warm_s" in row:
        text += f" (warm cache {seconds_text(row['first_step_warm_s'])})"
    return text


def seconds_text(s: float) -> str:
    """Short human form: milliseconds below 0.1 s."""
    return f"{s * 1e3:.2g} ms" if s < 0.1 else f"{s:.2f} s"


class PlainProgress:
    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stdout
        self.current, self.phase_name = "", None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def begin(self, workload: str, label: str) -> None:
        self.current = f"{workload} / {label}"
        self.phase_name = None
        self._print(f"[{self.done + 1}/{self.total}] {self.current}")

    def event(self, ev: dict) -> None:
        phase = ev.get("phase")
        if phase and phase != self.phase_name:  # one line per phase, not per repeat
            self.phase_name = phase
            self._print(f"    {phase}...")

    def end(self, row: dict) -> None:
        self.done += 1
        self._print(f"    -> {summary(row)}")

    def close(self) -> None:
        pass


class RichProgress:
    def __init__(self, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self.overall = self.progress.add_task("benchmarks", total=total)
        self.phase = self.progress.add_task("", total=None, visible=False)
        self.current = ""
        self.progress.start()

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def begin(self, workload: str, label: str) -> None:
        self.current = f"[bold]{workload}[/bold] / [cyan]{label}[/cyan]"
        self.progress.update(self.overall, description=f"{workload} / {label}")
        self.progress.reset(
            self.phase, description=f"{self.current}: starting", total=None, visible=True
        )

    def event(self, ev: dict) -> None:
        phase = ev.get("phase", "")
        desc = f"{self.current}: {phase}"
        if "repeat" in ev:
            self.progress.update(
                self.phase, description=desc, completed=ev["repeat"] - 1, total=ev["total"]
            )
        else:  # a new phase: restart its clock
            self.progress.reset(self.phase, description=desc, total=None)

    def end(self, row: dict) -> None:
        self.progress.advance(self.overall)
        style = "green" if row.get("status") == "ok" else "yellow"
        self.progress.console.print(f"{self.current}: [{style}]{summary(row)}[/{style}]")

    def close(self) -> None:
        self.progress.stop()


def make_progress(total: int, plain: bool = False):
    """Rich when available and writing to a terminal, plain lines otherwise."""
    if not plain and sys.stdout.isatty():
        try:
            return RichProgress(total)
        except ImportError:
            pass
    return PlainProgress(total)
