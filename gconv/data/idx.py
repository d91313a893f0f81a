"""MNIST-format IDX files (raw or gzip): reader and writer.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/ — described here, never downloaded):

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions k (≥ 1)
    then k big-endian uint32 sizes, then prod(sizes) items, big-endian, C order.

A file is gzip-compressed when it starts with the gzip magic bytes 0x1f 0x8b (the name does not
matter). Every malformed file raises :class:`IDXFormatError` naming the file and the problem.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODE_OF = {v.kind + str(v.itemsize): k for k, v in IDX_DTYPES.items()}  # "u1" -> 0x08, ...
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A malformed or truncated IDX file (the message names the file and the problem)."""


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXFormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def read_idx(path: str | os.PathLike, *, max_items: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array of its stored shape.

    ``max_items`` keeps only the first ``max_items`` entries along the leading dimension (the whole
    file is still validated against its header).
    """
    return read_idx_with_shape(path, max_items=max_items)[0]


def read_idx_with_shape(path: str | os.PathLike, *, max_items: int | None = None) -> tuple[np.ndarray, tuple]:
    """Like :func:`read_idx`, also returning the full shape stored in the header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw, _ = _read_bytes(path)
    if len(raw) < 4:
        raise IDXFormatError(f"{path}: file too short for an IDX header ({len(raw)} bytes, need at least 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: wrong magic number 0x{raw[0]:02x}{raw[1]:02x}{raw[2]:02x}{raw[3]:02x}; "
                             "an IDX file starts with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{code:02x} (known: "
                             + ", ".join(f"0x{k:02x}={v.name}" for k, v in IDX_DTYPES.items()) + ")")
    if ndim == 0:
        raise IDXFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dt = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    have = len(raw) - header
    if have < expected:
        raise IDXFormatError(f"{path}: truncated data: header says shape {dims} of {dt.name} "
                             f"({expected} bytes), file has {have} bytes after the header")
    if have > expected:
        raise IDXFormatError(f"{path}: size mismatch: header says shape {dims} of {dt.name} ({expected} bytes), "
                             f"file has {have - expected} extra bytes after the data")
    lead = dims[0] if max_items is None else min(dims[0], int(max_items))
    count = lead * int(np.prod(dims[1:], dtype=np.int64))
    arr = np.frombuffer(raw, dtype=dt, count=count, offset=header).reshape((lead,) + dims[1:])
    return arr.astype(dt.newbyteorder("="), copy=True), dims


def write_idx(path: str | os.PathLike, array, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed when ``compress`` (default: name ends in .gz)."""
    path = Path(path)
    a = np.asarray(array)
    if a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"write_idx: need an array with 1..255 dimensions, got {a.ndim}")
    key = a.dtype.kind + str(a.dtype.itemsize)
    if key not in _CODE_OF:
        raise ValueError(f"write_idx: dtype {a.dtype} has no IDX type code "
                         "(use uint8, int8, int16, int32, float32 or float64)")
    code = _CODE_OF[key]
    if any(d >= 2**32 for d in a.shape):
        raise ValueError(f"write_idx: dimension too large for IDX's 32-bit sizes: {a.shape}")
    body = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(a, dtype=IDX_DTYPES[code]).tobytes())
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(body, mtime=0) if compress else body)
    return path
