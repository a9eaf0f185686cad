"""The on-disk kernel cache (FUSEGRAD_CACHE_DIR): reuse across processes, damaged files, the
folder's permissions, and processes sharing one folder.

Every test here points FUSEGRAD_CACHE_DIR at its own fresh folder (mode 0700) and runs the
compiled step in a subprocess, because kernels already in this process's memory never touch
the disk. The subprocess script builds a small model from a fixed numpy seed, runs a compiled
training step three times and prints json: the losses and step.stats.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

if not os.environ.get("FUSEGRAD_CACHE_DIR"):  # tests/conftest.py normally sets one per session
    os.environ["FUSEGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusegrad-test-cache-")

import fusegrad  # noqa: E402

SCRIPT = textwrap.dedent('''
    import json
    import os

    import numpy as np

    import fusegrad
    import fusegrad.nn as nn
    import fusegrad.optim as optim


    def run(compiled):
        rng = np.random.default_rng(0)
        model = nn.Linear(6, 3)
        for p in model.parameters():
            p.data.numpy()[...] = rng.uniform(-0.4, 0.4, tuple(p.shape)).astype(np.float32)
        opt = optim.SGD(model.parameters(), lr=0.1)
        x = fusegrad.tensor(rng.standard_normal((8, 6)).astype(np.float32))
        y = fusegrad.tensor(rng.standard_normal((8, 3)).astype(np.float32))
        loss_fn = nn.MSELoss()

        def step(x, y):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        fn = fusegrad.compile(step) if compiled else step
        losses = [fn(x, y).item() for _ in range(3)]
        weights = model.weight.detach().numpy().tolist()
        return losses, weights, fn


    if __name__ == "__main__":
        losses, weights, fn = run(True)
        names = ("calls", "graphs_compiled", "graph_hits", "kernels_compiled", "kernel_hits",
                 "graph_breaks")
        print(json.dumps({"losses": losses, "weights": weights,
                          "stats": {k: getattr(fn.stats, k) for k in names},
                          "cache_dir": os.environ["FUSEGRAD_CACHE_DIR"]}))
''')

KERNELS_IN_STEP = 2  # Linear + MSELoss + SGD: see test_compile.test_mse_step_kernel_count


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache_script") / "fg_cache_step.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def eager_reference(script):
    ns = {"__name__": "fg_cache_step_eager"}
    exec(compile(SCRIPT, str(script), "exec"), ns)
    losses, weights, _ = ns["run"](False)
    return losses, weights


def private_dir(path) -> str:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o700)
    return str(path)


def env_for(cache_dir) -> dict:
    env = dict(os.environ)
    env["FUSEGRAD_CACHE_DIR"] = str(cache_dir)
    env.pop("FUSEGRAD_DEBUG", None)
    env.pop("NUMBA_CACHE_DIR", None)  # Numba's machine code must live next to the source
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def run_script(script, cache_dir, timeout=240) -> dict:
    p = subprocess.run([sys.executable, str(script)], env=env_for(cache_dir),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_values(result, eager_reference):
    losses, weights = eager_reference
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)
    np.testing.assert_allclose(result["weights"], weights, rtol=1e-5, atol=1e-6)


def kernel_sources(cache_dir) -> list[str]:
    return sorted(f for f in os.listdir(cache_dir) if f.startswith("fg_") and f.endswith(".py"))


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory, script, eager_reference):
    """A folder that one process filled: (folder, that process's result)."""
    d = private_dir(tmp_path_factory.mktemp("warm") / "cache")
    first = run_script(script, d)
    return d, first


def copy_of(warm, tmp_path) -> str:
    """A private copy of the warm folder (copy2 keeps the mtimes; Numba's index stamps the
    source by content hash (0.58+) or by mtime and size (older)). A copy that did not serve
    its kernels from disk fails the kernel counts of the tests that use it."""
    d = str(tmp_path / "cache")
    shutil.copytree(warm, d, copy_function=shutil.copy2)
    os.chmod(d, 0o700)
    return d


# --------------------------------------------------------------------------- reuse
def test_first_process_on_an_empty_folder_compiles_every_kernel(warm_cache, eager_reference):
    d, first = warm_cache
    check_values(first, eager_reference)
    s = first["stats"]
    assert s["kernels_compiled"] == KERNELS_IN_STEP and s["kernel_hits"] == 0
    assert (s["calls"], s["graphs_compiled"], s["graph_hits"]) == (3, 1, 2)
    assert len(kernel_sources(d)) == KERNELS_IN_STEP
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_second_process_compiles_zero_kernels(warm_cache, script, eager_reference):
    d, first = warm_cache
    second = run_script(script, d)
    check_values(second, eager_reference)
    assert second["losses"] == first["losses"]  # bit-identical: the same machine code
    s = second["stats"]
    assert s["kernels_compiled"] == 0
    assert s["kernel_hits"] == KERNELS_IN_STEP > 0
    assert s["graphs_compiled"] == 1  # graphs are per process; kernels come from disk
    assert kernel_sources(d) == kernel_sources(d)  # nothing new written
    assert len(kernel_sources(d)) == KERNELS_IN_STEP


# --------------------------------------------------------------------------- damaged files
def _garbage(path, sentinel):
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 3)


def _truncated(path, sentinel):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _tampered(path, sentinel):
    """Valid Python that keeps the marker and the function name but is not the hashed code."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    marker = "# ---- kernel code"
    assert marker in text
    head, _, _ = text.partition(marker)
    name = os.path.basename(path)[:-3]
    evil = (f"{marker} (the file name is the sha256 of what follows) ----\n"
            f"open({str(sentinel)!r}, 'w').write('imported')\n"
            f"from numba import njit\n"
            f"@njit\ndef {name}(*args):\n    return None\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + evil)


@pytest.mark.parametrize("damage", [_garbage, _truncated, _tampered],
                         ids=["garbage", "truncated", "tampered"])
def test_damaged_kernel_source_is_rewritten_and_recompiled(damage, warm_cache, script,
                                                           eager_reference, tmp_path):
    d = copy_of(warm_cache[0], tmp_path)
    sources = kernel_sources(d)
    victim = os.path.join(d, sources[0])
    sentinel = tmp_path / "tampered-code-ran"
    with open(victim, "rb") as f:
        good = f.read()
    damage(victim, sentinel)
    r = run_script(script, d)
    check_values(r, eager_reference)
    s = r["stats"]
    assert s["kernels_compiled"] + s["kernel_hits"] == KERNELS_IN_STEP
    # Only the damaged kernel may be compiled again. Numba (0.58+) stamps its machine code
    # with the sha256 of the source file, so once fusegrad has rewritten the exact code the
    # stored machine code is valid again and may be loaded (0); older Numba stamps mtimes (1).
    assert s["kernels_compiled"] in (0, 1)
    assert not sentinel.exists(), "fusegrad imported a kernel file whose hash did not match"
    with open(victim, "rb") as f:
        assert f.read() == good  # rewritten with the right code
    assert kernel_sources(d) == sources
    if damage is _garbage:  # and the rewritten folder serves the next process from disk
        again = run_script(script, d)
        check_values(again, eager_reference)
        assert again["stats"]["kernels_compiled"] == 0


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"], ids=["index", "data"])
def test_damaged_numba_machine_code_is_recompiled_not_a_crash(suffix, warm_cache, script,
                                                             eager_reference, tmp_path):
    d = copy_of(warm_cache[0], tmp_path)
    pyc = os.path.join(d, "__pycache__")
    damaged = [f for f in sorted(os.listdir(pyc)) if f.endswith(suffix)]
    assert len(damaged) == KERNELS_IN_STEP
    _truncate(os.path.join(pyc, damaged[0]))
    r = run_script(script, d)
    check_values(r, eager_reference)
    assert r["stats"]["kernels_compiled"] == 1


# --------------------------------------------------------------------------- permissions
def _perm_probe(x):
    # a kernel no other test compiles, so compiling it really goes to the folder
    return ((x.sin() * 0.75).cos() - x).abs().sqrt().sum()


def test_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    x = fusegrad.tensor(np.linspace(0.1, 1.0, 6, dtype=np.float32).reshape(2, 3))
    want = _perm_probe(x).item()
    step = fusegrad.compile(_perm_probe)
    d = tmp_path / "shared-cache"
    d.mkdir()
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(d))
    for mode in (0o777, 0o770, 0o707, 0o722, 0o702):
        os.chmod(d, mode)
        with pytest.raises(fusegrad.FusegradError) as e:
            step(x)
        assert isinstance(e.value, RuntimeError)
        assert str(d) in str(e.value), str(e.value)
        assert "writable" in str(e.value)
        assert kernel_sources(d) == []  # nothing written to or imported from it
    os.chmod(d, 0o700)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root can hand the folder to another user
        os.chown(d, 54321, -1)
        try:
            with pytest.raises(fusegrad.FusegradError) as e:
                step(x)
            assert str(d) in str(e.value) and "another user" in str(e.value), str(e.value)
        finally:
            os.chown(d, os.getuid(), -1)
    assert step(x).item() == pytest.approx(want, rel=1e-6)  # usable once the folder is private
    assert len(kernel_sources(d)) >= 1
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_missing_folder_is_created_private(tmp_path, monkeypatch):
    d = tmp_path / "does" / "not" / "exist"
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(d))
    x = fusegrad.tensor(np.linspace(0.1, 1.0, 6, dtype=np.float32).reshape(2, 3))

    def probe(x):  # another kernel of its own
        return ((x.cos() * 1.25).sin() + x).abs().sqrt().mean()

    assert fusegrad.compile(probe)(x).item() == pytest.approx(probe(x).item(), rel=1e-6)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert len(kernel_sources(d)) == 1


def test_subprocess_refuses_world_writable_folder(script, tmp_path):
    d = tmp_path / "world"
    d.mkdir()
    os.chmod(d, 0o777)
    p = subprocess.run([sys.executable, str(script)], env=env_for(d), capture_output=True,
                       text=True, timeout=240)
    assert p.returncode != 0
    assert "FusegradError" in p.stderr and str(d) in p.stderr, p.stderr
    assert kernel_sources(d) == []


# --------------------------------------------------------------------------- concurrency
def test_concurrent_processes_on_an_empty_shared_folder(script, eager_reference, tmp_path):
    d = private_dir(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, str(script)], env=env_for(d),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"rc={p.returncode}\n{err}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        check_values(r, eager_reference)
        s = r["stats"]
        assert s["kernels_compiled"] + s["kernel_hits"] == KERNELS_IN_STEP
    assert len(kernel_sources(d)) == KERNELS_IN_STEP
    assert not [f for f in os.listdir(d) if f.startswith(".tmp-")]  # no temp files left
    assert results[0]["losses"] == results[1]["losses"]
