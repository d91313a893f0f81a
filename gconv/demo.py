"""The main job (``gconv demo``): a short tour of the layers on built-in data.

Later issues grow this into the EE-wrapper demo (sine wave + safe-exploration check).
"""
from __future__ import annotations

import json
import os
import time

import torch


def run_demo(args) -> int:
    import gconv
    from gconv.nn import EEHead, Softplus

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    print("gconv", gconv.__version__)
    print("backends:", json.dumps({k: v["active"] for k, v in gconv.backends().items()}))
    z = torch.linspace(-0.05, 0.05, 7)
    print("softplus_100 on", [f"{v:+.3f}" for v in z.tolist()], "->",
          [f"{v:.4f}" for v in Softplus(100.0)(z).tolist()])
    head = EEHead(512, 10, 234)
    x = torch.randn(64, 512)
    t0 = time.perf_counter()
    y0 = head(x)
    head.freeze_gate()
    y1 = head(x)
    print(f"EEHead(512 -> 10, m_H = 234): forward {1e3 * (time.perf_counter() - t0) / 2:.1f} ms per batch of 64; "
          f"output change at the gate switch: {(y1 - y0).abs().max().item():.1e}")
    return 0
