"""``gconv.data.load(spec)``: one string names a data set — the form the command line uses.

    idx:PATH              an MNIST-format IDX images file (raw or .gz; labels found beside it) or a
                          folder with the MNIST file names; ``idx:IMAGES,LABELS`` names both files
    npz:PATH              a NumPy .npz archive (keys: see :func:`gconv.data.load_npz`)
    builtin:NAME          a built-in set (see :func:`gconv.data.list_builtins`)
"""
from __future__ import annotations

import os

from gconv.data.builtin import list_builtins, load_builtin
from gconv.data.dataset import Data, check_n
from gconv.data.files import load_idx, load_npz

SCHEMES = ("idx", "npz", "builtin")


def parse_spec(spec: str) -> tuple[str, str]:
    """``"npz:/a/b.npz"`` → ``("npz", "/a/b.npz")``; raises ValueError naming the problem."""
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string like 'builtin:sine', got {type(spec).__name__}")
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"cannot parse data spec {spec!r}: expected idx:PATH, npz:PATH or builtin:NAME "
                         f"(built-in sets: {', '.join(list_builtins())})")
    rest = rest.strip()
    if not rest:
        raise ValueError(f"data spec {spec!r} names no {'set' if scheme == 'builtin' else 'file'} after '{scheme}:'")
    return scheme, rest


def load(spec: str, n: int | None = None, seed: int = 0, **options) -> Data:
    """Load the data set named by ``spec`` (see module docstring); ``n`` samples (None: all / the
    set's default), ``seed`` for generated sets; ``options`` go to the loader."""
    scheme, rest = parse_spec(spec)
    check_n(n, None, spec)
    if scheme == "builtin":
        return load_builtin(rest, n=n, seed=seed, **options)
    if scheme == "npz":
        return load_npz(os.path.expanduser(rest), n=n, **options)
    path = os.path.expanduser(rest)
    if not os.path.exists(path) and "," in rest:
        images, labels = (os.path.expanduser(p.strip()) for p in rest.split(",", 1))
        return load_idx(images, labels, n=n, **options)
    return load_idx(path, n=n, **options)
