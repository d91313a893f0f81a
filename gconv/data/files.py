"""Loaders for files users point gconv at: MNIST-format IDX (raw or gzip) and NumPy NPZ.

Both return a :class:`~gconv.data.Data` (a DataSource with metadata). Image conventions, shared
by both: uint8 pixels become float32 in [0, 1] (``normalize=True``); a 3-D array (n, H, W) of
images gets a channel axis, (n, 1, H, W), as the models in :mod:`gconv.models` expect
(``channels=True``); integer labels become int64.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from gconv.data.dataset import Data, check_n
from gconv.data.idx import IDXFormatError, read_idx_with_shape

# NPZ key pairs tried in order (inputs, targets); the first pair present wins.
NPZ_KEYS = (("x", "y"), ("X", "Y"), ("images", "labels"), ("inputs", "targets"), ("data", "target"),
            ("data", "labels"), ("features", "labels"))
NPZ_SPLIT_KEYS = ("x_{split}", "y_{split}")   # Keras-style mnist.npz: x_train / y_train / x_test / y_test


def _inputs_tensor(a: np.ndarray, *, normalize: bool, channels: bool, what: str) -> torch.Tensor:
    if a.dtype.kind not in "uif":
        raise ValueError(f"{what}: inputs have dtype {a.dtype}; expected numbers")
    if channels and a.ndim == 3:
        a = a[:, None]
    if normalize and a.dtype == np.uint8:
        return torch.from_numpy(a.astype(np.float32) / np.float32(255.0))
    if normalize and a.dtype.kind in "ui":
        return torch.from_numpy(a.astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(a))


def _labels_tensor(a: np.ndarray, n: int, what: str) -> tuple[torch.Tensor, dict]:
    if a.shape[0] != n:
        raise ValueError(f"{what}: {a.shape[0]} targets for {n} inputs")
    if a.dtype.kind in "ui":
        if a.ndim != 1:
            raise ValueError(f"{what}: integer labels must be one-dimensional, got shape {a.shape}")
        if a.size and a.min() < 0:
            raise ValueError(f"{what}: negative class label {int(a.min())}")
        t = torch.from_numpy(a.astype(np.int64))
        return t, {"task": "classification", "num_classes": int(a.max()) + 1 if a.size else 0}
    if a.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(a)), {"task": "regression"}
    if a.dtype.kind == "b":
        return torch.from_numpy(a.astype(np.int64)), {"task": "classification", "num_classes": 2}
    raise ValueError(f"{what}: targets have dtype {a.dtype}; expected numbers")


# --- IDX -----------------------------------------------------------------------------------------
_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _with_gz(p: Path) -> Path | None:
    for cand in (p, p.with_name(p.name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _guess_labels(images: Path) -> Path | None:
    """train-images-idx3-ubyte[.gz] → train-labels-idx1-ubyte[.gz] (any name with images → labels)."""
    name = images.name
    for pat, rep in ((r"images-idx3", "labels-idx1"), (r"images", "labels")):
        if re.search(pat, name):
            base = re.sub(pat, rep, name)
            base = base[:-3] if base.endswith(".gz") else base
            found = _with_gz(images.with_name(base))
            if found is not None:
                return found
    return None


def load_idx(images: str | os.PathLike, labels: str | os.PathLike | None = None, *, n: int | None = None,
             split: str = "train", normalize: bool = True, channels: bool = True,
             find_labels: bool = True) -> Data:
    """Load MNIST-format IDX images and labels.

    ``images`` is an IDX file or a folder holding the standard MNIST names
    (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, picked by ``split``). Without ``labels``,
    a labels file beside the images is found by replacing ``images`` with ``labels`` in the name
    (``find_labels``); if none exists the data are unlabeled. ``n`` keeps the first n samples.
    """
    ipath = Path(images)
    if ipath.is_dir():
        if split not in _IDX_NAMES:
            raise ValueError(f"load_idx: split must be 'train' or 'test', got {split!r}")
        iname, lname = _IDX_NAMES[split]
        found = _with_gz(ipath / iname)
        if found is None:
            raise FileNotFoundError(f"{ipath}: no {iname}[.gz] in this folder (an IDX folder holds the MNIST "
                                    f"file names {', '.join(_IDX_NAMES[split])})")
        ipath = found
        if labels is None and find_labels:
            labels = _with_gz(ipath.parent / lname)
    elif not ipath.is_file():
        raise FileNotFoundError(f"IDX file not found: {ipath}")
    elif labels is None and find_labels:
        labels = _guess_labels(ipath)
    n = check_n(n, None, f"idx:{ipath}")
    X, xdims = read_idx_with_shape(ipath, max_items=n)
    if n is not None and X.shape[0] < n:
        raise ValueError(f"{ipath}: n = {n} exceeds the {X.shape[0]} samples in the file")
    meta = {"source": f"idx:{ipath}", "images_file": str(ipath), "stored_dtype": X.dtype.name,
            "stored_shape": list(xdims)}
    Xt = _inputs_tensor(X, normalize=normalize, channels=channels, what=str(ipath))
    Yt = None
    if labels is not None:
        lpath = Path(labels)
        Y, ydims = read_idx_with_shape(lpath, max_items=n)
        if Y.ndim != 1:
            raise IDXFormatError(f"{lpath}: a labels file must be one-dimensional, got shape {Y.shape}")
        if ydims[0] != xdims[0]:
            raise ValueError(f"{lpath}: {ydims[0]} labels for {xdims[0]} images in {ipath}")
        Yt, lmeta = _labels_tensor(Y, Xt.shape[0], str(lpath))
        meta.update(lmeta, labels_file=str(lpath))
    else:
        meta["task"] = "unlabeled"
    return Data(Xt, Yt, name=ipath.name, meta=meta)


# --- NPZ -----------------------------------------------------------------------------------------
def load_npz(path: str | os.PathLike, *, n: int | None = None, split: str | None = None,
             x_key: str | None = None, y_key: str | None = None, normalize: bool = True,
             channels: bool = True) -> Data:
    """Load a NumPy ``.npz`` archive.

    Keys: ``x_key`` / ``y_key`` when given; else the first pair present among
    ``x/y, X/Y, images/labels, inputs/targets, data/target, data/labels, features/labels``; else
    the Keras layout ``x_train/y_train`` (``split="train"``, the default) or ``x_test/y_test``;
    an archive with only an inputs key (``x``, ``X``, ``images``, ``inputs``, ``data``) is unlabeled.
    Pickled object arrays are refused. ``n`` keeps the first n samples.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"NPZ file not found: {p}")
    try:
        arc = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{p}: not a readable .npz archive ({exc})") from exc
    if not isinstance(arc, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: a .npy array, not an .npz archive; save with numpy.savez(path, x=..., y=...)")
    with arc:
        keys = list(arc.files)
        xk, yk = x_key, y_key
        if xk is None:
            if split is None:
                for a, b in NPZ_KEYS:
                    if a in keys and b in keys:
                        xk, yk = a, (b if y_key is None else y_key)
                        break
            if xk is None:
                sp = split or "train"
                a, b = (k.format(split=sp) for k in NPZ_SPLIT_KEYS)
                if a in keys:
                    xk, yk = a, (b if b in keys else None) if y_key is None else y_key
            if xk is None and split is None:
                for a in ("x", "X", "images", "inputs", "data"):
                    if a in keys:
                        xk = a
                        break
        if xk is None:
            raise ValueError(f"{p}: cannot find the inputs; keys present: {keys}. Expected one of the pairs "
                             + ", ".join(f"{a}/{b}" for a, b in NPZ_KEYS)
                             + ", x_train/y_train (split='train') or x_test/y_test, or pass x_key=/y_key=")
        for k in (xk, yk):
            if k is not None and k not in keys:
                raise ValueError(f"{p}: key {k!r} not in the archive; keys present: {keys}")
        try:
            X = arc[xk]
            Y = arc[yk] if yk is not None else None
        except ValueError as exc:  # object arrays need pickle
            raise ValueError(f"{p}: cannot read array ({exc}); pickled object arrays are not accepted") from exc
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{p}: corrupt archive member ({exc})") from exc
    if X.ndim == 0:
        raise ValueError(f"{p}: inputs {xk!r} are a scalar; need a leading sample dimension")
    n = check_n(n, X.shape[0], f"npz:{p}")
    if n is not None:
        X = X[:n]
        Y = None if Y is None else Y[:n] if Y.ndim else Y
    meta = {"source": f"npz:{p}", "file": str(p), "x_key": xk, "y_key": yk, "stored_dtype": X.dtype.name}
    Xt = _inputs_tensor(X, normalize=normalize, channels=channels, what=f"{p}[{xk}]")
    Yt = None
    if Y is not None:
        if Y.ndim == 0:
            raise ValueError(f"{p}: targets {yk!r} are a scalar; need one per sample")
        if n is None and Y.shape[0] != X.shape[0]:
            raise ValueError(f"{p}: {Y.shape[0]} targets ({yk!r}) for {X.shape[0]} inputs ({xk!r})")
        Yt, lmeta = _labels_tensor(Y, Xt.shape[0], f"{p}[{yk}]")
        meta.update(lmeta)
    else:
        meta["task"] = "unlabeled"
    return Data(Xt, Yt, name=p.name, meta=meta)


def from_tensors(X, Y=None, *, name: str = "tensors", num_classes: int | None = None) -> Data:
    """In-memory tensors / arrays as :class:`Data` (integer ``Y`` is treated as class labels)."""
    Xt = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    meta = {"source": "tensors"}
    Yt = None
    if Y is not None:
        Yt = Y if isinstance(Y, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(Y))
        if not Yt.is_floating_point() and not Yt.is_complex():
            if Yt.dim() == 1:
                meta.update(task="classification", num_classes=num_classes or (int(Yt.max()) + 1 if Yt.numel() else 0))
        else:
            meta["task"] = "regression"
    return Data(Xt, Yt, name=name, meta=meta)
