"""Opt-in (pytest --run-large / GCONV_RUN_LARGE=1): `gconv verify safe-exploration` end to end at
n = 60,000 on realistic 28×28 digits through the softplus ResNet-18 (bench/verify_60k.py). Needs an
otherwise idle machine: ~16 GiB of RAM, ~15 GB of disk; on 2 CPU cores about 30 minutes."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.large
def test_safe_exploration_end_to_end_60k(tmp_path):
    out = tmp_path / "report.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "verify_60k.py"), "--no-progress",
                        "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out)],
                       capture_output=True, text=True, timeout=3 * 3600, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())["report"]
    assert r["verdict"] == "VERIFIED", r
    assert r["inputs"]["n"] == 60000
    assert {"features", "total"} <= set(r["timings"])
