"""Built-in data sets, generated or shipped locally — nothing is ever downloaded.

    load_builtin(name, n=None, seed=0, **options) -> Data
    list_builtins() -> {name: one-line description}
    register_builtin(name, fn, description)   # fn(n, seed, **options) -> Data

=====================  =======================================================================
``sine``               seed 000 §2.2: x ~ U[−1, 1], y = 1{sin(20x) < 0}; n = 100
``two_moons``          two interleaving half circles with Gaussian noise (seeded); n = 200
``gaussian``           i.i.d. N(0, 1) inputs, uniform random labels (seed 000 §2.2's random
                       set: 16×16×1 images, 2 classes, n = 1,000)
``gaussian_regression`` seed 004 Experiment 1: x ~ N(0, I_20), y ~ U[−½, ½]; n = 20
``digits``             scikit-learn's 1,797 real 8×8 handwritten digits (ships with sklearn)
``digits28``           realistic 28×28 handwritten digits made from the real 8×8 ones (see
                       :func:`digits28`); n = 60,000 in a few seconds
=====================  =======================================================================

Classification sets accept ``targets="index"`` (int64 labels, the default except for ``sine``),
``"onehot"`` or ``"float"`` ((n, 1) in {0, 1} for two classes); ``dtype`` sets the float dtype.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gconv.data.dataset import Data, check_n, format_targets

_REGISTRY: dict[str, tuple[Callable[..., Data], str]] = {}


def register_builtin(name: str, fn: Callable[..., Data], description: str) -> None:
    """Add a built-in set: ``fn(n, seed, **options)`` returns a :class:`Data`."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"builtin name must be alphanumeric/underscore, got {name!r}")
    _REGISTRY[name] = (fn, description)


def list_builtins() -> dict[str, str]:
    """Names of the built-in sets with one-line descriptions."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def load_builtin(name: str, n: int | None = None, seed: int = 0, **options) -> Data:
    """Generate / load the built-in set ``name`` with ``n`` samples (default: the set's own)."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown built-in data set {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"builtin:{key}: seed must be an integer, got {seed!r}")
    check_n(n, None, f"builtin:{key}")
    fn = _REGISTRY[key][0]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(options) - set(params))
        if bad:
            raise ValueError(f"builtin:{key} has no option {', '.join(map(repr, bad))}; options: "
                             + ", ".join(k for k in params if k not in ("n", "seed")))
    data = fn(n=n, seed=int(seed), **options)
    data.meta.setdefault("seed", int(seed))
    return data


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _float_dtype(dtype) -> torch.dtype:
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    return dt


def _labels(name, labels, num_classes, targets, dtype):
    Y = format_targets(labels, num_classes, targets, f"builtin:{name}")
    return Y.to(dtype) if Y.is_floating_point() else Y


# --- sine (seed 000, §2.2) -----------------------------------------------------------------------
def sine(n: int | None = None, seed: int = 0, *, frequency: float = 20.0, targets: str = "float",
         dtype=torch.float32) -> Data:
    """x_i ~ U[−1, 1], y_i = 1{sin(20 x_i) < 0} (seed 000, §2.2); X (n, 1), Y (n, 1) in {0, 1}."""
    n = 100 if n is None else n
    dt = _float_dtype(dtype)
    x = torch.rand(n, 1, generator=_gen(seed), dtype=torch.float64) * 2 - 1
    lab = (torch.sin(frequency * x[:, 0]) < 0).long()
    return Data(x.to(dt), _labels("sine", lab, 2, targets, dt), name="sine",
                meta={"source": "builtin:sine", "task": "binary", "num_classes": 2, "frequency": frequency,
                      "paper": "seed 000 §2.2"})


# --- two moons -----------------------------------------------------------------------------------
def two_moons(n: int | None = None, seed: int = 0, *, noise: float = 0.1, targets: str = "index",
              dtype=torch.float32) -> Data:
    """Two interleaving half circles (outer: class 0, inner: class 1) plus N(0, noise²) jitter.

    Outer moon (cos t, sin t), inner moon (1 − cos t, ½ − sin t), t evenly spaced on [0, π];
    samples are shuffled with ``seed``. X (n, 2).
    """
    n = 200 if n is None else n
    if n < 2:
        raise ValueError(f"builtin:two_moons: need n >= 2, got {n}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"builtin:two_moons: noise must be >= 0, got {noise!r}")
    dt = _float_dtype(dtype)
    g = _gen(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = torch.linspace(0, math.pi, n_out, dtype=torch.float64)
    t_in = torch.linspace(0, math.pi, n_in, dtype=torch.float64)
    x = torch.cat([torch.stack([torch.cos(t_out), torch.sin(t_out)], 1),
                   torch.stack([1 - torch.cos(t_in), 0.5 - torch.sin(t_in)], 1)])
    lab = torch.cat([torch.zeros(n_out, dtype=torch.long), torch.ones(n_in, dtype=torch.long)])
    x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    return Data(x[perm].to(dt), _labels("two_moons", lab[perm], 2, targets, dt), name="two_moons",
                meta={"source": "builtin:two_moons", "task": "classification", "num_classes": 2, "noise": noise})


# --- Gaussian random inputs / labels -----------------------------------------------------------
def gaussian(n: int | None = None, seed: int = 0, *, shape=(1, 16, 16), num_classes: int = 2,
             targets: str = "index", dtype=torch.float32) -> Data:
    """x_i with i.i.d. N(0, 1) entries of ``shape``; labels uniform on {0, …, num_classes−1}.

    The default is seed 000 §2.2's random set: 16×16×1 images, 2 classes, n = 1,000.
    """
    n = 1000 if n is None else n
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"builtin:gaussian: shape must be positive sizes, got {shape}")
    if num_classes < 2:
        raise ValueError(f"builtin:gaussian: num_classes must be >= 2, got {num_classes}")
    dt = _float_dtype(dtype)
    g = _gen(seed)
    x = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    lab = torch.randint(0, num_classes, (n,), generator=g)
    return Data(x.to(dt), _labels("gaussian", lab, num_classes, targets, dt), name="gaussian",
                meta={"source": "builtin:gaussian", "task": "classification", "num_classes": num_classes})


def gaussian_regression(n: int | None = None, seed: int = 0, *, d: int = 20, low: float = -0.5,
                        high: float = 0.5, dtype=torch.float32) -> Data:
    """Seed 004, Experiment 1: x_a ~ N(0, I_d), y_a ~ U[low, high] independent; X (n, d), Y (n, 1)."""
    n = 20 if n is None else n
    if d < 1 or not high > low:
        raise ValueError(f"builtin:gaussian_regression: need d >= 1 and high > low, got d={d}, [{low}, {high}]")
    dt = _float_dtype(dtype)
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = low + (high - low) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return Data(x.to(dt), y.to(dt), name="gaussian_regression",
                meta={"source": "builtin:gaussian_regression", "task": "regression", "paper": "seed 004 Exp. 1"})


# --- scikit-learn digits -------------------------------------------------------------------------
def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the built-in 'digits' and 'digits28' sets need scikit-learn, which ships the 1,797 "
                          "real 8x8 digits (no download): pip install scikit-learn  (or gconv[digits])") from exc
    d = load_digits()
    return np.asarray(d.images, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64)


def digits(n: int | None = None, seed: int = 0, *, targets: str = "index", dtype=torch.float32) -> Data:
    """scikit-learn's 1,797 real 8×8 digits: X (n, 1, 8, 8) in [0, 1], 10 classes, file order
    (``n`` keeps the first n; ``seed`` is recorded but does not reorder real data)."""
    imgs, lab = _sklearn_digits()
    check_n(n, imgs.shape[0], "builtin:digits")
    n = imgs.shape[0] if n is None else n
    dt = _float_dtype(dtype)
    x = torch.from_numpy(imgs[:n, None]).to(dt)
    return Data(x, _labels("digits", torch.from_numpy(lab[:n]), 10, targets, dt), name="digits",
                meta={"source": "builtin:digits", "task": "classification", "num_classes": 10,
                      "origin": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)"})


DIGITS28_TEST_FRACTION = 0.2


def digits28(n: int | None = None, seed: int = 0, *, split: str = "all", targets: str = "index",
             dtype=torch.float32, uint8: bool = False, chunk: int = 4096) -> Data:
    """Realistic 28×28 handwritten digits, made deterministically from the real 8×8 ones.

    Each image takes a real scikit-learn digit (used in turn, in seeded random order), upsamples it
    bicubically into the central 20×20 box of a 28×28 canvas (MNIST's layout), and warps it by one
    ``grid_sample`` through a random affine map (rotation ±15°, scale 0.85–1.12, aspect 0.9–1.1,
    shear ±0.2; centred by centre of mass as MNIST is, ±1.5 px jitter) composed with a smooth elastic displacement (a 4×4 Gaussian field,
    bicubically interpolated, up to ~1.2 px). A soft threshold at a random level varies the stroke
    width and sharpness, then contrast and multiplicative stroke noise vary; the background stays
    exactly 0 and pixels are quantised to 8 bits, as in MNIST. Many images share a source digit, so
    the set keeps the near-duplicate, ill-conditioned structure of real data that i.i.d. Gaussian
    inputs hide (design notes §5).

    ``split``: ``"all"`` uses every source digit; ``"train"`` the first 80 % of them, ``"test"`` the
    remaining 20 % (disjoint writers' samples for honest test error). X is (n, 1, 28, 28), float in
    [0, 1] (or uint8 with ``uint8=True``: 47 MB at n = 60,000). Default n = 60,000.
    """
    n = 60000 if n is None else n
    imgs, lab = _sklearn_digits()
    P = imgs.shape[0]
    cut = int(round(P * (1 - DIGITS28_TEST_FRACTION)))
    pools = {"all": slice(0, P), "train": slice(0, cut), "test": slice(cut, P)}
    if split not in pools:
        raise ValueError(f"builtin:digits28: split must be 'all', 'train' or 'test', got {split!r}")
    imgs, lab = imgs[pools[split]], lab[pools[split]]
    P = imgs.shape[0]
    dt = _float_dtype(dtype)
    src = torch.from_numpy(imgs).float()[:, None]
    canvas = F.pad(F.interpolate(src, size=(20, 20), mode="bicubic", align_corners=False).clamp_(0, 1),
                   (4, 4, 4, 4))
    # centre of mass of each source canvas, in grid_sample's normalised (x, y) coordinates
    coords = (torch.arange(28, dtype=torch.float32) + 0.5) / 14 - 1
    mass = canvas[:, 0].sum((1, 2)).clamp_min(1e-6)
    com = torch.stack([(canvas[:, 0].sum(1) * coords).sum(1) / mass, (canvas[:, 0].sum(2) * coords).sum(1) / mass], 1)
    g = _gen(seed)
    order = torch.cat([torch.randperm(P, generator=g) for _ in range(math.ceil(n / P))])[:n]
    out = torch.empty(n, 1, 28, 28, dtype=torch.uint8)
    px = 2.0 / 28  # one pixel in grid_sample's normalised coordinates
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        b = e - s

        def U(lo, hi, shape=None):
            return lo + (hi - lo) * torch.rand(shape or (b,), generator=g)
        ang = U(-15.0, 15.0) * (math.pi / 180)
        scale, aspect, shear = U(0.85, 1.12), U(0.9, 1.1), U(-0.2, 0.2)
        shift = U(-1.5, 1.5, (b, 2)) * px
        sx, sy = 1 / (scale * aspect), aspect / scale      # output → input map shrinks by the scale
        c, si = torch.cos(ang), torch.sin(ang)
        A = torch.empty(b, 2, 3)
        A[:, 0, 0], A[:, 0, 1] = c * sx, (shear - si) * sx
        A[:, 1, 0], A[:, 1, 1] = si * sy, c * sy
        # translate so the output's centre of mass lands at the centre plus the jitter (as MNIST centres)
        A[:, :, 2] = com[order[s:e]] - torch.einsum("bij,bj->bi", A[:, :, :2], shift)
        grid = F.affine_grid(A, [b, 1, 28, 28], align_corners=False)
        coarse = torch.randn(b, 2, 4, 4, generator=g) * U(0.0, 1.2)[:, None, None, None]
        grid += F.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=True).permute(0, 2, 3, 1) * px
        img = F.grid_sample(canvas[order[s:e]], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        thr = U(0.2, 0.55)[:, None, None, None]                 # lower threshold → thicker strokes
        sharp = U(0.06, 0.14)[:, None, None, None]
        base = torch.sigmoid(-thr / sharp)
        img = ((torch.sigmoid((img - thr) / sharp) - base) / (1 - base)).clamp_(0, 1)
        img *= U(0.75, 1.0)[:, None, None, None]                # contrast
        noise = U(0.0, 0.05)[:, None, None, None] * torch.randn(img.shape, generator=g)
        img = (img * (1 + noise) * (img > 0.02)).clamp_(0, 1)    # stroke texture; background stays 0
        out[s:e] = (img * 255).round_().to(torch.uint8)
    labels = torch.from_numpy(lab)[order]
    X = out if uint8 else out.to(dt).div_(255)
    return Data(X, _labels("digits28", labels, 10, targets, dt), name="digits28", validate=False,
                meta={"source": "builtin:digits28", "task": "classification", "num_classes": 10, "split": split,
                      "num_source_digits": P, "origin": "sklearn 8x8 digits, upsampled and randomly deformed"})


register_builtin("sine", sine, "seed 000 §2.2 sine wave: x ~ U[-1,1], y = 1{sin(20x) < 0} (n = 100)")
register_builtin("two_moons", two_moons, "two interleaving half circles with Gaussian noise 0.1 (n = 200)")
register_builtin("gaussian", gaussian, "i.i.d. N(0,1) 1x16x16 inputs, uniform labels in {0,1} (n = 1,000)")
register_builtin("gaussian_regression", gaussian_regression,
                 "seed 004 Exp. 1: x ~ N(0, I_20), y ~ U[-1/2, 1/2] (n = 20)")
register_builtin("digits", digits, "scikit-learn's real 8x8 handwritten digits, 10 classes (n = 1,797)")
register_builtin("digits28", digits28,
                 "realistic 28x28 handwritten digits generated from the real 8x8 ones (n = 60,000)")
