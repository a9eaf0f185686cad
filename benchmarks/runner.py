"""Runs the suite: machine limits, then one worker process per (workload, contender), then the
correctness check and the ratios.

The parent imports only numpy: every contender runs in its own process (see ``worker.py``)
one after the other, never two at once, so no contender's threads run while another is timed.

Time to first step for the compilers is measured cold: ``fusegrad compiled`` runs with a fresh
temporary ``FUSEGRAD_CACHE_DIR`` and then once more in a second process on the same folder
(warm cache: kernels load from disk); ``torch.compile`` gets a fresh ``TORCHINDUCTOR_CACHE_DIR``;
JAX has no persistent cache unless configured.  ``--quick`` keeps the default cache folders and
skips the warm-cache process.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from .contenders import CONTENDERS, REFERENCE_ORDER, installed
from .limits import best_limits, lower_bound_s, measure_limits
from .progress import PlainProgress
from .worker import PREFIX
from .workloads import WORKLOADS, Schedule

REPO = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-3, 1e-6
VERSIONED = (
    "numpy",
    "numba",
    "llvmlite",
    "scipy",
    "fusegrad",
    "torch",
    "jax",
    "jaxlib",
    "rich",
    "matplotlib",
    "psutil",
)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": platform.processor() or None,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "env": {
            k: os.environ[k]
            for k in (
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS",
            )
            if k in os.environ
        },
        "threads": "torch.set_num_threads(cores, or --torch-threads) in torch workers; "
        "JAX_PLATFORMS=cpu for --device cpu; numpy contender: 1 BLAS thread (as fusegrad); "
        "numba: its default",
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "version")}
            for p in threadpool_info()
        ]
    except ImportError:
        pass
    return info


@dataclass(frozen=True)
class Settings:
    """What every worker of one run shares."""

    quick: bool = False
    device: str = "cpu"
    schedule: Schedule | None = None  # overrides every workload's schedule (tests)
    timeout: float = 600.0  # seconds per worker process
    torch_threads: int = os.cpu_count() or 1


def worker_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO)]
    if (REPO / "src" / "fusegrad" / "__init__.py").exists():
        paths.append(str(REPO / "src"))  # the checkout's fusegrad, installed or not
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if settings.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    env["BENCH_TORCH_THREADS"] = str(settings.torch_threads)
    env.update(extra)
    return env


def run_worker(spec: dict, env: dict, timeout: float, on_event) -> dict:
    """Run ``benchmarks.worker`` with ``spec``; relay its events; return its result."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    log: deque[str] = deque(maxlen=30)
    result = None
    while True:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            result = {"status": "error", "note": f"timed out after {timeout:.0f} s"}
            break
        if line is None:
            break
        if line.startswith(PREFIX):
            event = json.loads(line[len(PREFIX) :])
            if event["event"] == "result":
                result = event["result"]
            else:
                on_event(event)
        elif line.strip():
            log.append(line.rstrip())
    proc.wait()
    if result is None:
        tail = " | ".join(list(log)[-3:])
        result = {"status": "error", "note": f"worker exited with code {proc.returncode}: {tail}"}
    if result["status"] != "ok" and log:
        result["log_tail"] = list(log)
    return result


def measure_one(workload, contender, settings: Settings, progress) -> dict:
    """All processes for one (workload, contender): returns the row."""
    row = {"workload": workload.name, "contender": contender.key, "label": contender.label}
    reason = installed(*contender.modules)
    if reason:
        return {**row, "status": "skipped", "note": reason}
    spec = {
        "workload": workload.name,
        "contender": contender.key,
        "quick": settings.quick,
        "device": settings.device,
        "schedule": asdict(settings.schedule) if settings.schedule else None,
    }
    cache_var = {
        "fusegrad_compiled": "FUSEGRAD_CACHE_DIR",
        "torch_compile": "TORCHINDUCTOR_CACHE_DIR",
    }.get(contender.key)
    t0 = time.perf_counter()
    cache_dir = None
    extra = {}
    if cache_var and not settings.quick:
        cache_dir = tempfile.mkdtemp(prefix=f"bench-{contender.key}-")  # mode 0700
        extra[cache_var] = cache_dir
    try:
        env = worker_env(settings, extra)
        result = run_worker(spec, env, settings.timeout, progress.event)
        if result["status"] == "ok" and cache_dir and contender.key == "fusegrad_compiled":
            progress.event({"phase": "warm cache: first step in a new process"})
            warm = run_worker(
                {**spec, "first_step_only": True}, env, settings.timeout, progress.event
            )
            if warm["status"] == "ok":
                result["first_step_warm_s"] = warm["first_step_s"]
                result["warm_stats"] = warm.get("stats", {})
            else:
                result.setdefault("notes", []).append(f"warm-cache run: {warm.get('note')}")
        if cache_dir:
            result["cache"] = "cold (fresh folder)"
        elif cache_var:
            result["cache"] = "default folder (may be warm)"
    finally:
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return {**row, **result, "wall_s": time.perf_counter() - t0}


def check_losses(rows: list[dict], rtol: float = RTOL, atol: float = ATOL) -> None:
    """Mark each measured row 'ok' or 'WRONG' against a reference contender.

    The reference is fusegrad eager, unless numpy and PyTorch eager agree with each other and
    not with it: the candidate that agrees with the most rows wins, ties going to the order in
    ``REFERENCE_ORDER``.  Both the first loss (forward only) and the final loss (after the same
    number of steps, same data and DynamicNet depths) must match within rtol."""
    done = [r for r in rows if r["status"] == "ok"]
    if not done:
        return

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= atol + rtol * abs(b)

    def agrees(r: dict, ref: dict) -> bool:
        return all(close(r[k], ref[k]) for k in ("first_loss", "final_loss"))

    candidates = [r for key in REFERENCE_ORDER for r in done if r["contender"] == key] or done[:1]
    ref = max(candidates, key=lambda c: sum(agrees(r, c) for r in done))
    for r in done:
        r["reference"] = ref["contender"]
        if agrees(r, ref):
            r["check"] = "ok"
        else:
            r["check"] = "WRONG"
            r["note"] = (
                f"final loss {r['final_loss']:.7g} vs {ref['final_loss']:.7g} "
                f"({ref['label']}), first loss {r['first_loss']:.7g} vs "
                f"{ref['first_loss']:.7g}"
            )


def add_ratios(rows: list[dict], bound_s: float) -> None:
    """Ratios of median ms/step to fusegrad eager, PyTorch eager and the machine bound.
    A WRONG row gets no ratios: a wrong answer is not reported as fast."""
    base = {
        r["contender"]: r["median_s"]
        for r in rows
        if r["status"] == "ok" and r.get("check") == "ok"
    }
    for r in rows:
        if r["status"] != "ok" or r.get("check") != "ok":
            continue
        for key in ("fusegrad_eager", "torch_eager"):
            if key in base:
                r[f"vs_{key}"] = r["median_s"] / base[key]
        r["vs_bound"] = r["median_s"] / bound_s


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all cores busy during ``seconds`` (Linux /proc/stat), else None.
    Unlike the load average it does not remember the previous minute (our own last run)."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def load_note(torch_threads: int) -> str | None:
    """A warning for the report when other processes are using the CPU at the start."""
    busy = cpu_busy()
    if busy is None:  # not Linux: fall back to the 1-minute load average
        busy = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0) / (os.cpu_count() or 1)
    if busy <= 0.15:
        return None
    note = f"CPU {busy:.0%} busy with other processes at start: timings are noisy"
    if torch_threads > 1:
        note += (
            f"; torch with {torch_threads} threads (spinning OpenMP pool) can lose 10-100x "
            "under load: rerun on an idle machine or with --torch-threads 1"
        )
    return note + "; compare ratios within one run only"


def run_suite(
    workloads: list[str] | None = None,
    contenders: list[str] | None = None,
    quick: bool = False,
    device: str = "cpu",
    progress=None,
    schedule: Schedule | None = None,
    timeout: float | None = None,
    torch_threads: int | None = None,
) -> dict:
    """Run the benchmarks and return the full report (what ``--json`` writes).

    ``schedule`` overrides every workload's step schedule (tests use a tiny one)."""
    t_start = time.perf_counter()
    ws = [WORKLOADS[n] for n in (workloads or WORKLOADS)]
    cs = [CONTENDERS[k] for k in (contenders or CONTENDERS)]
    progress = progress or PlainProgress(len(ws) * len(cs))
    settings = Settings(
        quick,
        device,
        schedule,
        timeout or (240.0 if quick else 600.0),
        torch_threads or os.cpu_count() or 1,
    )
    uses_torch = any(c.modules == ("torch",) for c in cs)
    notes = [n for n in [load_note(settings.torch_threads if uses_torch else 1)] if n]
    progress.message("measuring machine limits (bandwidth, GEMM)...")
    limits = measure_limits(quick)
    progress.message(
        f"  bandwidth {limits['bandwidth_GBps']:.1f} GB/s, float32 GEMM "
        f"{limits['gemm_f32_GFLOPs']:.1f} GFLOP/s"
    )

    costs, rows = {}, []
    for w in ws:
        sizes, sched = w.config(quick)
        sched = schedule or sched
        costs[w.name] = (w, sizes, sched, w.cost(sizes, sched))
        w_rows = []
        for c in cs:
            progress.begin(w.name, c.label)
            if quick and contenders is None and c.quick_skip:
                row = {"workload": w.name, "contender": c.key, "label": c.label}
                row.update(status="skipped", note=c.quick_skip)
            else:
                row = measure_one(w, c, settings, progress)
            progress.end(row)
            w_rows.append(row)
        check_losses(w_rows)
        rows.extend(w_rows)

    # Limits once more at the end, keeping the best of both: a busy moment at the start
    # must not make the bound look slow (which would put contenders "below the bound").
    limits = best_limits(limits, measure_limits(quick))
    report_workloads = {}
    for name, (w, sizes, sched, cost) in costs.items():
        bound = lower_bound_s(cost, limits)
        add_ratios([r for r in rows if r["workload"] == name], bound)
        report_workloads[name] = {
            "summary": w.summary,
            "sizes": sizes,
            "steps": sched.total,
            "schedule": asdict(sched),
            "cost": {"bytes": cost.bytes, "flops": cost.flops, "model": cost.model},
            "bound_s": bound,
        }

    if device == "cuda":
        notes.append("--device cuda: peak RSS is host memory; GPU memory is not measured")
        if not any(r["status"] == "ok" and r["contender"] != "numpy" for r in rows):
            notes.append(
                "--device cuda: no CUDA device available to any contender; "
                "only the CPU numpy baseline ran"
            )
    return {
        "machine": machine_info(),
        "versions": versions(),
        "limits": limits,
        "settings": {
            "quick": quick,
            "device": device,
            "torch_threads": settings.torch_threads,
            "rtol": RTOL,
            "atol": ATOL,
            "contenders": [c.key for c in cs],
            "memory": "peak RSS growth over the RSS after setup (worker.py)",
        },
        "workloads": report_workloads,
        "results": rows,
        "notes": notes,
        "wall_s": time.perf_counter() - t_start,
    }
