"""The GPU benchmark script cannot run here; its --selftest runs every code path on CPU tensors."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_layers_script_selftest(tmp_path):
    out = tmp_path / "selftest.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_layers.py"), "--selftest",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "selftest ok" in proc.stdout and out.exists()


def test_gpu_layers_script_refuses_without_cuda():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_layers.py")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
