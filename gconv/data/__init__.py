"""Data: loaders for IDX / NPZ files and built-in sets (no downloads, ever), and the fixed-order
:class:`DataSource` view every gconv routine uses.

    load("builtin:sine" | "idx:PATH" | "npz:PATH", n=None, seed=0) -> Data
    load_builtin(name, n=None, seed=0, **options), list_builtins()
    load_idx(images, labels=None, n=None), load_npz(path, n=None), from_tensors(X, Y)
    read_idx(path), write_idx(path, array)

Every loader returns a :class:`Data` — a :class:`DataSource` (pass it anywhere gconv takes data)
holding ``X``, ``Y`` and a ``meta`` dict. See docs/training.md.
"""
from gconv.data.source import Batch, DataSource, as_data_source
from gconv.data.dataset import Data
from gconv.data.idx import IDXFormatError, read_idx, write_idx
from gconv.data.files import from_tensors, load_idx, load_npz
from gconv.data.builtin import (digits, digits28, gaussian, gaussian_regression, list_builtins, load_builtin,
                                register_builtin, sine, two_moons)
from gconv.data.spec import load, parse_spec

__all__ = ["Batch", "DataSource", "as_data_source", "Data", "load", "parse_spec", "load_builtin",
           "list_builtins", "register_builtin", "load_idx", "load_npz", "from_tensors", "read_idx",
           "write_idx", "IDXFormatError", "sine", "two_moons", "gaussian", "gaussian_regression", "digits",
           "digits28"]
