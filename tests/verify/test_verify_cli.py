"""`gconv verify` end to end through a subprocess: exit codes, JSON, plot, IDX files, help."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gconv.data import write_idx
from gconv.verify import VerificationReport

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gconv(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gconv", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_help_documents_every_condition():
    top = gconv("--help")
    assert top.returncode == 0 and "verify" in top.stdout
    r = gconv("verify", "--help")
    assert r.returncode == 0
    for cond in ("safe-exploration", "expressivity", "alignment", "ntk-rank", "gram-pd", "gradient-basis"):
        assert cond in r.stdout
    r = gconv("verify", "safe-exploration", "--help")
    for opt in ("--data", "--n", "--model", "--seed", "--memory-budget", "--device", "--json", "--plot", "--m-H"):
        assert opt in r.stdout
    assert "exit" in r.stdout.lower()


def test_safe_exploration_verified_json_and_plot(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    r = gconv("verify", "safe-exploration", "--data", "builtin:digits28", "--n", "120", "--model", "resnet18",
              "--model-arg", "width=8", "--seed", "1", "--memory-budget", "2GiB", "--json", str(out),
              "--plot", str(png), "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERIFIED" in r.stdout and "margin" in r.stdout and "time:" in r.stdout
    rep = VerificationReport.from_json(out.read_text())
    assert rep.verified and rep.inputs["n"] == 120 and rep.inputs["seed"] == 1
    assert rep.inputs["model_name"] == "resnet18" and rep.inputs["data"] == "builtin:digits28"
    assert rep.inputs["m_H"] == 4 and png.stat().st_size > 1000


def test_not_verified_exits_1(tmp_path):
    out = tmp_path / "e.json"
    r = gconv("verify", "expressivity", "--data", "builtin:digits", "--n", "60", "--model", "lenet",
              "--width", "40", "--json", str(out), "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    assert json.loads(out.read_text())["verdict"] == "NOT_VERIFIED"


def test_idx_file_written_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50, dtype=np.uint8)
    write_idx(tmp_path / "imgs-idx3-ubyte", images)
    write_idx(tmp_path / "labels-idx1-ubyte", labels)
    spec = f"idx:{tmp_path / 'imgs-idx3-ubyte'},{tmp_path / 'labels-idx1-ubyte'}"
    out = tmp_path / "g.json"
    r = gconv("verify", "gram-pd", "--data", spec, "--model", "p3l", "--model-arg", "m=80", "--json", str(out),
              "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert rep["inputs"]["n"] == 50 and rep["inputs"]["D"] == 80 and rep["margin"] > 0


def test_errors_exit_2(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x01" * 7)    # truncated payload
    r = gconv("verify", "safe-exploration", "--data", f"idx:{bad}", "--model", "mlp", "--no-progress")
    assert r.returncode == 2 and str(bad.name) in r.stderr, r.stderr
    wrong_magic = tmp_path / "magic-idx3-ubyte"
    wrong_magic.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 32)
    r = gconv("verify", "safe-exploration", "--data", f"idx:{wrong_magic}", "--no-progress")
    assert r.returncode == 2 and "magic" in r.stderr.lower(), r.stderr
    fake = tmp_path / "fake.npz"
    fake.write_text("not a zip archive")
    r = gconv("verify", "gram-pd", "--data", f"npz:{fake}", "--model", "p3l", "--no-progress")
    assert r.returncode == 2 and "fake.npz" in r.stderr, r.stderr
    r = gconv("verify", "safe-exploration", "--data", "builtin:nope")
    assert r.returncode == 2 and "unknown built-in" in r.stderr
    r = gconv("verify", "safe-exploration", "--data", "builtin:sine", "--model", "resnet18")
    assert r.returncode == 2 and "image data" in r.stderr
    r = gconv("verify", "ntk-rank", "--data", "builtin:sine", "--model", "mlp")
    assert r.returncode == 2 and "--reference" in r.stderr
    r = gconv("verify", "safe-exploration", "--data", "builtin:digits", "--n", "100", "--model", "lenet",
              "--memory-budget", "1KiB", "--no-progress")
    assert r.returncode == 2 and "budget" in r.stderr, r.stderr
    r = gconv("verify", "safe-exploration", "--data", "builtin:sine", "--model", "mlp", "--weights",
              str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "missing.pt" in r.stderr


def test_alignment_and_ntk_rank_from_the_command_line(tmp_path):
    import torch
    from gconv.models import MLP
    r = gconv("verify", "alignment", "--data", "builtin:two_moons", "--n", "20", "--model", "mlp",
              "--model-arg", "widths=[24]", "--dtype", "float64", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    m = MLP(1, [300, 300], 1, seed=0)
    torch.save(m.state_dict(), tmp_path / "tau.pt")
    r = gconv("verify", "ntk-rank", "--data", "builtin:sine", "--n", "10", "--model", "mlp", "--reference",
              str(tmp_path / "tau.pt"), "--params", "head", "--no-progress")
    # the last layer alone has 301 parameters: K(w^k) over them has rank 10 = n at the model's own init
    assert r.returncode == 0, r.stdout + r.stderr
