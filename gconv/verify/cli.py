"""``gconv verify <condition>``: the papers' conditions from the command line.

    gconv verify safe-exploration --data builtin:digits28 --n 2000 --model resnet18 --seed 1 \\
        --memory-budget 4GiB --json out.json --plot out.png

Prints a short summary (verdict, margin, time split) and optionally writes the JSON report and a
plot.  Exit codes: 0 verified, 1 not verified or inconclusive, 2 error.
"""
from __future__ import annotations

import argparse
import ast
import math
import os
import sys

EXIT_OK, EXIT_NOT_VERIFIED, EXIT_ERROR = 0, 1, 2

CONDITION_HELP = {
    "safe-exploration": "seed 000 Assumption 4 (Table 2): rank phi(q, theta) = n, phi = sigmoid(Zq) (Khatri-Rao) Z, "
                        "Z = [features, 1], m_H = ceil(2n/m_(H-1))",
    "expressivity": "seeds 002/003 Assumption 1 (Table 1): rank [h_X, 1_n] = n with a softplus last hidden layer "
                    "of width ceil(1.1 n) on the model's features",
    "alignment": "seed 000 Definition 2 / eq. 2.5: vec(Y_l) in Col(J(theta)) (needs labels)",
    "ntk-rank": "seed 003 Algorithm 1 phase 2: rank K(w^k) >= rank K(w^tau), K = J J^T "
                "(--weights = w^k, --reference = w^tau)",
    "gram-pd": "seed 004 Theorem 3: lambda_min(Phi Phi^T / D) > 0 for the embedding Phi (--model p3l)",
    "gradient-basis": "seed 001 Theorem 1: L(theta) - inf_alpha L_theta(alpha) = 0 (needs labels)",
}

EPILOG = """\
data:   idx:IMAGES[,LABELS] (MNIST-format IDX, raw or .gz) | npz:PATH (arrays X[, Y]) | builtin:NAME
        (sine, two_moons, gaussian, gaussian_regression, digits, digits28 — no downloads)
models: resnet18 (pre-activation, softplus(100); --model-arg width=16 for a thinner net), lenet,
        mlp (--model-arg widths=[300,300]), p3l (--model-arg m=200); the input shape and the number
        of classes come from the data.
exit:   0 verified, 1 not verified or inconclusive, 2 error.
"""


def _model_kwargs(pairs) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _num_outputs(data, loss) -> int:
    meta = getattr(data, "meta", {}) or {}
    task = meta.get("task")
    if task == "classification":
        return int(meta.get("num_classes") or (int(data.Y.max()) + 1))
    if data.Y is not None and data.Y.dim() > 1:
        return int(math.prod(data.Y.shape[1:]))
    return 1


def build_model(name: str, data, seed: int, kwargs: dict, loss=None):
    """A gconv.models network sized for ``data`` (input shape, number of outputs), initialised from ``seed``."""
    from gconv.models import get_model
    shape = list(data.X.shape[1:])
    key = name.lower().replace("-", "_")
    out = _num_outputs(data, loss)
    kw = dict(kwargs)
    if key in ("resnet18", "preact_resnet18", "lenet"):
        if len(shape) != 3:
            raise ValueError(f"--model {name} needs image data (n, C, H, W); this data has samples of shape {shape}")
        kw.setdefault("in_channels", shape[0])
        kw.setdefault("num_classes", out)
        if key == "lenet":
            kw.setdefault("input_size", shape[1])
    elif key == "mlp":
        kw.setdefault("in_features", int(math.prod(shape)))
        kw.setdefault("widths", [300, 300])
        kw.setdefault("out_features", out)
    elif key == "p3l":
        kw.setdefault("d", int(math.prod(shape)))
        kw.setdefault("m", 200)
    kw.setdefault("seed", seed)
    return get_model(name, **kw)


def _default_loss(data) -> str:
    task = (getattr(data, "meta", {}) or {}).get("task")
    return {"classification": "cross_entropy", "binary": "binary_cross_entropy"}.get(task, "squared")


def _load_weights(model, path):
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors)")
    model.load_state_dict(state)
    return state


def run_verify(args) -> int:
    import torch
    import gconv.verify as V
    from gconv.data import load
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    data = load(args.data, n=args.n, seed=args.data_seed)
    progress = (not args.no_progress) and sys.stderr.isatty()
    model = build_model(args.model, data, args.seed, _model_kwargs(args.model_arg))
    if args.dtype == "float64":
        model = model.to(torch.float64)
    if args.weights:
        _load_weights(model, args.weights)
    common = dict(progress=progress, memory_budget=args.memory_budget)
    feat = dict(batch_size=args.batch_size, train=args.train_mode, device=args.device, layer=args.layer,
                spectrum=bool(args.plot))
    cond = args.condition
    if cond == "safe-exploration":
        rep = V.safe_exploration(model, data, m_H=args.m_H, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                                 **feat, **common)
    elif cond == "expressivity":
        width = None if args.width is None else ("model" if args.width == "model" else int(args.width))
        rep = V.expressivity(model, data, width=width, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                             **feat, **common)
    elif cond == "gram-pd":
        rep = V.gram_positive_definite(model, data, checkpoint_dir=args.checkpoint_dir, **feat, **common)
    else:
        if not data.has_targets:
            raise ValueError(f"{cond} needs labelled data; {args.data} has no targets")
        params = None if args.params in (None, "all") else args.params
        loss = args.loss or _default_loss(data)
        model.train(args.train_mode)
        if cond == "alignment":
            rep = V.alignment(model, data, loss, params=params, tol=args.tol, seed=args.seed, device=args.device,
                              **common)
        elif cond == "gradient-basis":
            rep = V.gradient_basis_gap(model, data, loss, params=params, tol=args.tol, seed=args.seed,
                                       device=args.device, **common)
        else:    # ntk-rank
            if not args.reference:
                raise ValueError("ntk-rank needs --reference PATH (the state_dict at w^tau); --weights gives w^k")
            ref = build_model(args.model, data, args.seed, _model_kwargs(args.model_arg))
            if args.dtype == "float64":
                ref = ref.to(torch.float64)
            _load_weights(ref, args.reference)
            ref.train(args.train_mode)
            rep = V.ntk_rank_preserved(model, data, ref, params=params, seed=args.seed, **common)
    rep.inputs.setdefault("data", args.data)
    rep.inputs["model_name"] = args.model
    print(rep.summary())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            fh.write(rep.to_json(indent=2))
        print(f"  report: {args.json}")
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        V.plot_report(rep, args.plot)
        print(f"  plot: {args.plot}")
    return rep.verdict.exit_code


def _cmd(args) -> int:
    try:
        return run_verify(args)
    except (TypeError, KeyError, OSError, ImportError, NotImplementedError) as exc:
        # the errors gconv's main() does not map to exit code 2 itself
        print(f"gconv verify: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def add_subcommand(subparsers) -> None:
    """Register ``gconv verify`` (called by gconv.cli)."""
    p = subparsers.add_parser(
        "verify", help="check a paper's condition (safe exploration, expressivity, alignment, ...) on a model and data",
        description="Check one of the papers' conditions on a model and a data set, with a certificate. "
                    "Exit codes: 0 verified, 1 not verified or inconclusive, 2 error.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_cmd)
    csub = p.add_subparsers(dest="condition", metavar="<condition>", required=True)
    for name, help_ in CONDITION_HELP.items():
        c = csub.add_parser(name, help=help_, description=help_ + ". Exit codes: 0 verified, 1 not verified or "
                            "inconclusive, 2 error.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        c.set_defaults(func=_cmd)
        g = c.add_argument_group("data and model")
        g.add_argument("--data", required=True, help="idx:PATH | npz:PATH | builtin:NAME")
        g.add_argument("--n", type=int, default=None, help="use the first N samples (default: all)")
        g.add_argument("--data-seed", type=int, default=0, help="seed of generated built-in data (default 0)")
        g.add_argument("--model", default="resnet18", help="resnet18 | lenet | mlp | p3l (default resnet18)")
        g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                       help="extra model constructor argument (repeatable), e.g. width=16, widths=[300,300]")
        g.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and of the "
                       "verifier's random draws (q, W) (default 0)")
        g.add_argument("--weights", help="load a state_dict (torch.save) into the model (trained weights; w^k for ntk-rank)")
        g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model dtype (default float32)")
        g.add_argument("--train-mode", action="store_true", help="evaluate the model in train mode (default eval)")
        r = c.add_argument_group("resources and output")
        r.add_argument("--memory-budget", default=None, help="most memory the check may use, e.g. 16GiB")
        r.add_argument("--device", default=None, help="cpu | cuda (default: cpu)")
        r.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
        r.add_argument("--json", metavar="OUT", help="write the JSON report here")
        r.add_argument("--plot", metavar="OUT.png", help="write a plot (certified bounds, spectrum) here")
        r.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name in ("safe-exploration", "expressivity", "gram-pd"):
            r.add_argument("--layer", default=None, help="module name of the feature layer (default: the model's "
                           "documented feature layer)")
            r.add_argument("--checkpoint-dir", default=None, help="resume the factorisation from / save it to here")
        else:
            c.set_defaults(layer=None, checkpoint_dir=None)
        if name == "safe-exploration":
            c.add_argument("--m-H", dest="m_H", type=int, default=None, help="EE layer width m_H (default ceil(2n/m_(H-1)))")
        if name == "expressivity":
            c.add_argument("--width", default=None, help="last hidden layer width (default ceil(1.1 n)); 'model' = "
                           "use the model's own feature layer as h_X")
        if name in ("alignment", "gradient-basis", "ntk-rank"):
            c.add_argument("--params", default=None, help="parameters: all (default) | last | a name prefix")
        if name in ("alignment", "gradient-basis"):
            c.add_argument("--loss", default=None, help="squared | cross_entropy | binary_cross_entropy "
                           "(default from the data's task)")
            c.add_argument("--tol", type=float, default=None, help="relative tolerance (default sqrt(eps) of the dtype)")
        if name == "ntk-rank":
            c.add_argument("--reference", default=None, help="state_dict at w^tau (required)")
        for k in ("m_H", "width", "params", "loss", "tol", "reference"):
            c.set_defaults(**{k: c.get_default(k)})
