"""IDX and NPZ loaders: round trips, layouts, and malformed files that must be refused by name."""
import gzip

import numpy as np
import pytest
import torch

import gconv.data as D
from gconv.data import IDXFormatError


def _mnist_like(n=13, h=28, w=28, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_every_type_code(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((5, 3, 7)) * 50).astype(dtype)
    p = D.write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == gz
    b = D.read_idx(p)
    assert b.dtype == a.dtype.newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_header_bytes_follow_the_format(tmp_path):
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    raw = D.write_idx(tmp_path / "x.idx", a).read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == (0).to_bytes(2, "big") and raw[14:16] == (1).to_bytes(2, "big")  # big-endian items


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_mnist_layout_with_labels_found_beside(tmp_path, gz):
    X, Y = _mnist_like()
    ext = ".gz" if gz else ""
    D.write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", X)
    D.write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", Y)
    for d in (D.load_idx(tmp_path / f"train-images-idx3-ubyte{ext}"), D.load_idx(tmp_path),
              D.load(f"idx:{tmp_path}"), D.load(f"idx:{tmp_path / f'train-images-idx3-ubyte{ext}'}")):
        assert d.X.shape == (13, 1, 28, 28) and d.X.dtype == torch.float32
        torch.testing.assert_close(d.X[:, 0], torch.from_numpy(X).float() / 255)
        assert d.Y.dtype == torch.int64 and d.Y.tolist() == Y.tolist()
        assert d.meta["task"] == "classification" and d.meta["num_classes"] == int(Y.max()) + 1
        assert D.as_data_source(d) is d and d.n == 13
    d5 = D.load_idx(tmp_path, n=5)
    assert d5.n == 5 and d5.Y.tolist() == Y[:5].tolist()
    with pytest.raises(ValueError, match="exceeds"):
        D.load_idx(tmp_path, n=14)


def test_load_idx_explicit_labels_spec_and_unlabeled(tmp_path):
    X, Y = _mnist_like(n=4, h=5, w=6)
    D.write_idx(tmp_path / "imgs.idx", X)
    D.write_idx(tmp_path / "labs.idx", Y)
    d = D.load(f"idx:{tmp_path / 'imgs.idx'},{tmp_path / 'labs.idx'}")
    assert d.X.shape == (4, 1, 5, 6) and d.Y.tolist() == Y.tolist()
    u = D.load_idx(tmp_path / "imgs.idx")
    assert u.Y is None and u.meta["task"] == "unlabeled" and not u.has_targets
    raw = D.load_idx(tmp_path / "imgs.idx", normalize=False, channels=False)
    assert raw.X.dtype == torch.uint8 and raw.X.shape == (4, 5, 6)


def test_label_count_mismatch_is_named(tmp_path):
    X, Y = _mnist_like(n=6)
    D.write_idx(tmp_path / "train-images-idx3-ubyte", X)
    D.write_idx(tmp_path / "train-labels-idx1-ubyte", Y[:5])
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        D.load_idx(tmp_path)


def _good_idx(tmp_path):
    return D.write_idx(tmp_path / "good.idx", np.arange(24, dtype=np.uint8).reshape(2, 3, 4)).read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:3], "too short"),
    (lambda b: b"\x08\x03" + b[2:], "wrong magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: b[:10], "truncated header"),
    (lambda b: b[:-1], "truncated data"),
    (lambda b: b + b"\x00\x00", "extra bytes"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_idx_names_file_and_problem(tmp_path, mutate, message, gz):
    bad = mutate(_good_idx(tmp_path))
    p = tmp_path / ("bad.idx.gz" if gz else "bad.idx")
    p.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(IDXFormatError, match=message) as ei:
        D.read_idx(p)
    assert str(p) in str(ei.value)


def test_truncated_gzip_stream_is_named(tmp_path):
    p = tmp_path / "x.idx.gz"
    D.write_idx(p, np.zeros((50, 50), np.uint8))
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(IDXFormatError, match="gzip") as ei:
        D.read_idx(p)
    assert str(p) in str(ei.value)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        D.read_idx(tmp_path / "nope.idx")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        D.load_idx(tmp_path)
    with pytest.raises(FileNotFoundError):
        D.load(f"npz:{tmp_path / 'nope.npz'}")


def test_write_idx_refuses_unrepresentable(tmp_path):
    with pytest.raises(ValueError, match="no IDX type code"):
        D.write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1..255 dimensions"):
        D.write_idx(tmp_path / "a.idx", np.float32(1.0))


# --- NPZ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [("x", "y"), ("X", "Y"), ("images", "labels"), ("inputs", "targets")])
def test_npz_documented_key_pairs(tmp_path, keys):
    X, Y = _mnist_like(n=7, h=8, w=8)
    np.savez(tmp_path / "d.npz", **{keys[0]: X, keys[1]: Y})
    d = D.load(f"npz:{tmp_path / 'd.npz'}")
    assert d.X.shape == (7, 1, 8, 8) and d.Y.tolist() == Y.tolist()
    assert d.meta["x_key"] == keys[0] and d.meta["y_key"] == keys[1]


def test_npz_keras_layout_splits_and_float_targets(tmp_path):
    X, Y = _mnist_like(n=9)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=X[:6], y_train=Y[:6], x_test=X[6:], y_test=Y[6:])
    tr = D.load_npz(tmp_path / "mnist.npz")
    te = D.load_npz(tmp_path / "mnist.npz", split="test")
    assert tr.n == 6 and te.n == 3 and te.Y.tolist() == Y[6:].tolist()
    np.savez(tmp_path / "reg.npz", x=np.random.rand(5, 3), y=np.random.rand(5, 2))
    r = D.load_npz(tmp_path / "reg.npz", n=4)
    assert r.X.dtype == torch.float64 and r.Y.shape == (4, 2) and r.meta["task"] == "regression"


def test_npz_errors_name_the_problem(tmp_path):
    np.savez(tmp_path / "k.npz", a=np.zeros((3, 2)), b=np.zeros(3))
    with pytest.raises(ValueError, match=r"cannot find the inputs; keys present: \['a', 'b'\]"):
        D.load_npz(tmp_path / "k.npz")
    d = D.load_npz(tmp_path / "k.npz", x_key="a", y_key="b")
    assert d.n == 3
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2)), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="4 targets"):
        D.load_npz(tmp_path / "m.npz")
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match="pickled object arrays"):
        D.load_npz(tmp_path / "o.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        D.load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0], [np.nan]]), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="NaN"):
        D.load_npz(tmp_path / "nan.npz")


def test_from_tensors_and_data_views():
    X = torch.randn(10, 3)
    Y = torch.arange(10) % 3
    d = D.from_tensors(X, Y, name="mine")
    assert d.num_classes == 3 and d.meta["task"] == "classification"
    a, b = d.split(0.7, seed=1)
    assert a.n == 7 and b.n == 3
    assert sorted(torch.cat([a.X, b.X]).sum(1).tolist()) == sorted(X.sum(1).tolist())
    a2, _ = d.split(0.7, seed=1)
    assert torch.equal(a.X, a2.X)
    assert torch.equal(d.head(4).X, X[:4])
    bx = [b.x for b in d.batches(4)]
    assert [t.shape[0] for t in bx] == [4, 4, 2] and torch.equal(torch.cat(bx), X)
    xb, yb = next(iter(d.loader(5, shuffle=True, seed=0)))
    assert xb.shape == (5, 3) and yb.shape == (5,)
    with pytest.raises(ValueError, match="same number of samples"):
        D.Data(X, Y[:3])
    with pytest.raises(ValueError, match="empty"):
        D.Data(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="training part"):
        d.split(10)
    assert d.to(dtype=torch.float64).X.dtype == torch.float64 and d.to(dtype=torch.float64).Y.dtype == torch.int64
