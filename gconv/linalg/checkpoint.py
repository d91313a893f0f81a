"""``checkpoint_dir`` layout and resume logic for :func:`certify_full_row_rank`.

::

    manifest.json      problem fingerprint, shape, kind, block size (fixed at the first run)
    engine.npz         whitening matrices / scaling exponents (so a resumed run factors the same bits)
    attempt<k>/        one factorisation: state.json (its shift), L_<col>.bin, diag_<col>.bin
    certificate.json   the final certificate (a rerun on a finished directory returns it)

Every file is written atomically (temporary file, fsync, rename), so a kill at any moment leaves
only finished block columns behind.  A directory holding a different problem is refused.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from gconv.linalg.storage import atomic_write_bytes, atomic_write_json

FORMAT = 1


class CheckpointDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        os.makedirs(self.path, exist_ok=True)
        self.manifest = None
        mp = os.path.join(self.path, "manifest.json")
        if os.path.exists(mp):
            with open(mp) as fh:
                self.manifest = json.load(fh)

    def bind(self, meta: dict) -> bool:
        """Attach to the problem ``meta`` (fingerprint, n, D, kind, block...). True when resuming."""
        if self.manifest is not None:
            old = self.manifest
            for key in ("format", "fingerprint", "n", "D", "kind", "whiten"):
                if key in meta and old.get(key) != meta.get(key):
                    raise ValueError(f"checkpoint_dir {self.path} holds a different problem ({key}: "
                                     f"{old.get(key)!r} there, {meta.get(key)!r} now); use another directory")
            return True
        self.manifest = dict(meta, format=FORMAT)
        atomic_write_json(os.path.join(self.path, "manifest.json"), self.manifest)
        return False

    @property
    def block(self):
        return None if self.manifest is None else self.manifest.get("block")

    def attempt_dir(self, k: int) -> str:
        d = os.path.join(self.path, f"attempt{k}")
        os.makedirs(d, exist_ok=True)
        return d

    def attempt_shift(self, k: int):
        p = os.path.join(self.path, f"attempt{k}", "state.json")
        if os.path.exists(p):
            with open(p) as fh:
                return float.fromhex(json.load(fh)["shift"])
        return None

    def set_attempt_shift(self, k: int, shift: float) -> None:
        atomic_write_json(os.path.join(self.attempt_dir(k), "state.json"), {"shift": float(shift).hex()})

    def save_arrays(self, name: str, arrays: dict) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
        atomic_write_bytes(os.path.join(self.path, name), buf.getvalue())

    def load_arrays(self, name: str) -> dict | None:
        p = os.path.join(self.path, name)
        if not os.path.exists(p):
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    def save_json(self, name: str, obj) -> None:
        atomic_write_json(os.path.join(self.path, name), obj)

    def load_json(self, name: str):
        p = os.path.join(self.path, name)
        if not os.path.exists(p):
            return None
        with open(p) as fh:
            return json.load(fh)
