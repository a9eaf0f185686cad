"""Runs one (workload, contender) measurement in a fresh process.

Why a process per contender: torch, jax, numba and OpenBLAS each start thread pools that keep
spinning after a call and slow down whoever runs next on a 2-core machine; imports and caches
differ; and the memory figure must belong to one contender.  A fresh process also makes "time
to first step" honest: nothing was compiled or cached in memory before.

Protocol: the parent passes a JSON spec as argv[1]; this process prints progress events and the
final result as lines ``@@bench {json}`` on stdout (anything else on stdout/stderr is the
libraries' own output, kept by the parent for error messages).

Memory: on Linux the peak resident set size is reset (``/proc/self/clear_refs`` = 5) after the
setup (imports, model, data) and read back (``VmHWM``) after the last step, so the figure is
the peak RSS growth caused by running the steps: activations, gradients, optimizer state,
compiled code and compiler working memory, numpy's C allocations included (tracemalloc would
miss most of those).  Elsewhere it falls back to ``ru_maxrss`` growth, which cannot see a peak
lower than the import-time peak.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback

PREFIX = "@@bench "


def emit(event: str, **data) -> None:
    print(PREFIX + json.dumps({"event": event, **data}), flush=True)


class Memory:
    """Resident-set figures in MiB; see the module docstring for what they measure."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss"

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def rss(self) -> float:
        value = self._status("VmRSS")
        if value is None:
            import psutil  # non-Linux fallback

            value = psutil.Process().memory_info().rss / 2**20
        return value

    def reset_peak(self) -> None:
        if self.method != "ru_maxrss":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> float:
        if self.method != "ru_maxrss":
            return self._status("VmHWM") or 0.0
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def measure(spec: dict) -> dict:
    from .contenders import CONTENDERS, Skip
    from .workloads import DYNAMIC_NET_SEED, WORKLOADS, Schedule

    workload = WORKLOADS[spec["workload"]]
    contender = CONTENDERS[spec["contender"]]
    sizes, sched = workload.config(spec["quick"])
    if spec.get("schedule"):
        sched = Schedule(**spec["schedule"])
    first_only = spec.get("first_step_only", False)
    device = spec.get("device", "cpu")
    mem = Memory()
    result: dict = {"status": "ok", "steps": 1 if first_only else sched.total}

    emit("phase", phase="setup")
    try:
        prepared = contender.prepare(workload, workload.make_init(sizes), device)
    except Skip as e:
        return {"status": "skipped", "note": str(e)}
    except ImportError as e:
        return {"status": "skipped", "note": f"import failed: {e}"}
    result["notes"] = prepared.notes

    rss_setup = mem.rss()
    mem.reset_peak()
    emit("phase", phase="compile + first step" if contender.compiles else "first step")
    random.seed(DYNAMIC_NET_SEED)
    try:
        t0 = time.perf_counter()
        out = prepared.step(0)
        first_loss = prepared.value(out)
        result["first_step_s"] = time.perf_counter() - t0
    except Exception as e:
        # A compiler that cannot handle the step is reported as skipped, not as a crash.
        status = "skipped" if contender.compiles else "error"
        return {
            "status": status,
            "note": f"first step failed: {type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }
    result["first_loss"] = first_loss
    if first_only:
        result["stats"] = prepared.stats()
        return result

    emit("phase", phase="warm-up", total=sched.warmup)
    t0 = time.perf_counter()
    for i in range(1, sched.warmup):
        out = prepared.step(i)
    prepared.value(out)
    result["warmup_s"] = time.perf_counter() - t0
    rss_warm = mem.rss()

    times = []
    i = sched.warmup
    for r in range(sched.repeats):
        emit("phase", phase="steady state", repeat=r + 1, total=sched.repeats)
        t0 = time.perf_counter()
        for _ in range(sched.inner):
            out = prepared.step(i)
            i += 1
        final_loss = prepared.value(out)  # synchronises async runtimes
        times.append((time.perf_counter() - t0) / sched.inner)

    times_sorted = sorted(times)
    result.update(
        final_loss=final_loss,
        times_s=times,
        median_s=times_sorted[len(times) // 2]
        if len(times) % 2
        else (times_sorted[len(times) // 2 - 1] + times_sorted[len(times) // 2]) / 2,
        min_s=times_sorted[0],
        stats=prepared.stats(),
        memory={
            "method": mem.method,
            "rss_setup_mib": rss_setup,
            "peak_growth_mib": max(0.0, mem.peak() - rss_setup),
            "steady_growth_mib": mem.rss() - rss_warm,
        },
    )
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = measure(spec)
    except Exception as e:  # anything unexpected still becomes a row in the table
        result = {
            "status": "error",
            "note": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }
    emit("result", result=result)


if __name__ == "__main__":
    main()
