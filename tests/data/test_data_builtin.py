"""Built-in sets: shapes, labels, determinism under the seed, and the spec parser."""

import pytest
import torch

import gconv.data as D


def test_listing_and_registry():
    names = D.list_builtins()
    assert {"sine", "two_moons", "gaussian", "gaussian_regression", "digits", "digits28"} <= set(names)
    assert all(isinstance(v, str) and v for v in names.values())
    with pytest.raises(ValueError, match="unknown built-in data set 'nope'; available: .*sine"):
        D.load_builtin("nope")
    with pytest.raises(ValueError, match="builtin:sine has no option 'width'; options: frequency"):
        D.load_builtin("sine", width=3)


@pytest.mark.parametrize("name", ["sine", "two_moons", "gaussian", "gaussian_regression", "digits28"])
def test_generated_sets_are_deterministic_under_seed(name):
    kw = {"n": 300} if name == "digits28" else {}
    a, b = D.load_builtin(name, seed=3, **kw), D.load_builtin(name, seed=3, **kw)
    c = D.load_builtin(name, seed=4, **kw)
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert not torch.equal(a.X, c.X)
    state = torch.random.get_rng_state()
    D.load_builtin(name, seed=5, **kw)
    assert torch.equal(state, torch.random.get_rng_state()), "the global RNG must not be used"


def test_sine_matches_seed000():
    d = D.load_builtin("sine")
    assert d.X.shape == (100, 1) and d.Y.shape == (100, 1) and d.meta["task"] == "binary"
    x = d.X[:, 0].double()
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(d.Y[:, 0], (torch.sin(20 * x) < 0).float())
    assert 0.3 < float(d.Y.mean()) < 0.7
    assert D.load_builtin("sine", targets="index").Y.dtype == torch.int64


def test_two_moons_geometry_and_balance():
    d = D.load_builtin("two_moons", n=201, noise=0.0)
    X, Y = d.X.double(), d.Y
    assert X.shape == (201, 2) and int((Y == 0).sum()) == 100 and int((Y == 1).sum()) == 101
    outer, inner = X[Y == 0], X[Y == 1]
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(100, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close((inner - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1),
                               torch.ones(101, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(outer[:, 1].min()) >= -1e-6 and float(inner[:, 1].max()) <= 0.5 + 1e-6
    noisy = D.load_builtin("two_moons", n=200, noise=0.1)
    assert not torch.allclose(noisy.X[noisy.Y == 0].norm(dim=1), torch.ones(100))
    oh = D.load_builtin("two_moons", targets="onehot")
    assert oh.Y.shape == (200, 2) and torch.equal(oh.Y.sum(1), torch.ones(200))


def test_gaussian_sets():
    d = D.load_builtin("gaussian")
    assert d.X.shape == (1000, 1, 16, 16) and set(d.Y.unique().tolist()) == {0, 1}
    assert abs(float(d.X.mean())) < 0.01 and abs(float(d.X.std()) - 1) < 0.01
    d = D.load_builtin("gaussian", n=50, shape=7, num_classes=5, dtype="float64")
    assert d.X.shape == (50, 7) and d.X.dtype == torch.float64 and int(d.Y.max()) <= 4
    r = D.load_builtin("gaussian_regression", n=40)
    assert r.X.shape == (40, 20) and r.Y.shape == (40, 1)
    assert float(r.Y.min()) >= -0.5 and float(r.Y.max()) <= 0.5 and r.meta["task"] == "regression"


def test_digits_real_data():
    d = D.load_builtin("digits")
    assert d.X.shape == (1797, 1, 8, 8) and d.num_classes == 10
    assert float(d.X.min()) == 0.0 and float(d.X.max()) == 1.0
    assert d.Y[:10].tolist() == list(range(10))
    assert D.load_builtin("digits", n=20).n == 20
    with pytest.raises(ValueError, match="exceeds the 1797"):
        D.load_builtin("digits", n=2000)


def test_digits28_realistic_and_fast():
    import time
    t0 = time.perf_counter()
    d = D.load_builtin("digits28", n=6000, seed=0)
    dt = time.perf_counter() - t0
    assert dt < 20, f"6,000 images took {dt:.1f} s"
    X, Y = d.X, d.Y
    assert X.shape == (6000, 1, 28, 28) and X.dtype == torch.float32
    assert float(X.min()) == 0.0 and float(X.max()) <= 1.0
    # balanced classes (each source digit is used in turn) and MNIST-like layout: dark border, ink in the middle
    counts = torch.bincount(Y, minlength=10)
    assert int(counts.min()) > 500 and int(counts.max()) < 700
    assert float(X[:, :, 0, :].mean()) < 0.01 and float(X[:, :, 10:18, 10:18].mean()) > 0.2
    ink = (X > 0).float().mean(dim=(1, 2, 3))
    assert 0.05 < float(ink.mean()) < 0.4
    # 8-bit quantised pixels, all images distinct
    assert torch.equal((X * 255).round(), X * 255) or torch.allclose((X * 255).round(), X * 255, atol=1e-4)
    flat = (X.reshape(6000, -1) * 255).round().to(torch.uint8).numpy()
    assert len({r.tobytes() for r in flat}) == 6000
    # same class is closer than other classes on average (the images carry the digit's identity)
    Xf = X.reshape(6000, -1)[:2000].double()
    Yf = Y[:2000]
    cent = torch.stack([Xf[Yf == k].mean(0) for k in range(10)])
    nearest = torch.cdist(Xf, cent).argmin(1)
    assert float((nearest == Yf).float().mean()) > 0.6
    u8 = D.load_builtin("digits28", n=100, uint8=True)
    assert u8.X.dtype == torch.uint8 and torch.equal(u8.X.float() / 255, D.load_builtin("digits28", n=100).X)


def test_digits28_ill_conditioned_like_real_data():
    """Pixels of real-digit-derived images are far more ill-conditioned than i.i.d. Gaussian ones
    (compared on the pixels that are ever inked, so all-zero border columns do not decide it)."""
    d = D.load_builtin("digits28", n=1500, seed=1)
    X = d.X.reshape(1500, -1).double()
    X = X[:, X.abs().sum(0) > 0]
    s = torch.linalg.svdvals(X)
    g = torch.linalg.svdvals(torch.randn(X.shape, dtype=torch.float64))
    assert float(s[0] / s[-1]) > 1e3 * float(g[0] / g[-1])


def test_digits28_splits_use_disjoint_sources():
    tr = D.load_builtin("digits28", n=50, split="train")
    te = D.load_builtin("digits28", n=50, split="test")
    assert tr.meta["num_source_digits"] + te.meta["num_source_digits"] == 1797
    with pytest.raises(ValueError, match="split"):
        D.load_builtin("digits28", n=5, split="val")


def test_missing_sklearn_gives_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="need scikit-learn.*pip install scikit-learn"):
        D.load_builtin("digits")


@pytest.mark.parametrize("spec, msg", [
    ("sine", "cannot parse data spec 'sine'"),
    ("csv:/x", "expected idx:PATH, npz:PATH or builtin:NAME"),
    ("builtin:", "names no set"),
    ("builtin:moons", "unknown built-in data set 'moons'"),
])
def test_spec_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        D.load(spec)


def test_spec_builtin_with_n_and_seed():
    d = D.load("builtin:two_moons", n=30, seed=2)
    assert d.n == 30 and d.meta["seed"] == 2 and d.meta["source"] == "builtin:two_moons"
    assert D.parse_spec(" NPZ:/a/b.npz") == ("npz", "/a/b.npz")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            D.load("builtin:sine", n=bad)
