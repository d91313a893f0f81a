"""Resume after interruption: kill a run mid-way, rerun with the same checkpoint_dir, same certificate."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import gconv.linalg as L

PROBLEM = r"""
import time
import numpy as np
import gconv.linalg as L


def problem(kind, delay=0.0):
    rng = np.random.default_rng(99)
    if kind == "dense":
        A = rng.standard_normal((900, 1000))

        def rows(s, e):
            time.sleep(delay)
            return A[s:e]
        return L.RowBlocks(rows, n=900, D=1000, block_rows=128)
    S, Z = rng.random((900, 3)) + 0.05, rng.standard_normal((900, 400))
    if delay:
        from gconv.linalg import gram
        orig = gram.KhatriRaoGram.panel

        def slow(self, s, w):
            time.sleep(delay)
            return orig(self, s, w)
        gram.KhatriRaoGram.panel = slow
    return L.KhatriRao(S, Z)
"""

SCRIPT = PROBLEM + r"""
import sys
kind, ck, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = L.certify_full_row_rank(problem(kind, delay), checkpoint_dir=ck, block_size=64, progress=False)
print(c.status.value)
"""

_ns: dict = {}
exec(PROBLEM, _ns)
problem = _ns["problem"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "khatri_rao"])
def test_kill_and_resume_gives_the_identical_certificate(tmp_path, kind):
    ck = str(tmp_path / "ck")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), kind, ck, "0.15"], env=env, cwd=os.getcwd(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 120:
            done = glob.glob(os.path.join(ck, "attempt0", "L_*.bin"))
            if len(done) >= 4 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted: " + proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    n_done = len(glob.glob(os.path.join(ck, "attempt0", "L_*.bin")))
    assert 4 <= n_done < 15 and not os.path.exists(os.path.join(ck, "certificate.json"))
    resumed = L.certify_full_row_rank(problem(kind), checkpoint_dir=ck, block_size=64, progress=False)
    fresh = L.certify_full_row_rank(problem(kind), checkpoint_dir=str(tmp_path / "fresh"), block_size=64,
                                    progress=False)
    plain = L.certify_full_row_rank(problem(kind), block_size=64, progress=False)
    assert resumed.status == "CERTIFIED_FULL_RANK"
    step = [m for m in resumed.methods if m.method == "gram_cholesky"][0]
    assert step.details["resumed_from_column"] >= 4 * 64
    assert resumed.comparable() == fresh.comparable() == plain.comparable()
    assert resumed.sigma_min_lower == plain.sigma_min_lower
    # a finished directory returns its certificate at once
    again = L.certify_full_row_rank(problem(kind), checkpoint_dir=ck, block_size=64, progress=False)
    assert again.details.get("from_checkpoint") and again.comparable() == resumed.comparable()
    with open(os.path.join(ck, "certificate.json")) as fh:
        assert json.load(fh)["status"] == "CERTIFIED_FULL_RANK"
