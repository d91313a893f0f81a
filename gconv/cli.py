"""The ``gconv`` command.

Subcommands are registered by the subpackages that own them (``add_subcommand``), so each area
keeps its command-line code beside its API:

    gconv backends          which implementation each op uses, and why
    gconv demo              the main job on built-in data
    gconv verify <cond>     a paper's condition on a model and data set (gconv/verify/cli.py):
                            safe-exploration, expressivity, alignment, ntk-rank, gram-pd,
                            gradient-basis; exit 0 verified / 1 not verified or inconclusive / 2 error
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_NOT_VERIFIED, EXIT_ERROR = 0, 1, 2


def _cmd_backends(args) -> int:
    import gconv
    print(json.dumps(gconv.backends(), indent=2))
    return EXIT_OK


def _cmd_demo(args) -> int:
    from gconv.demo import run_demo
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gconv", description=(
        "gconv: fused layers, certified rank verification and Jacobian operators for training "
        "with global-convergence guarantees. Exit codes: 0 success / verified, 1 not verified or "
        "inconclusive, 2 error."))
    from gconv._version import __version__
    p.add_argument("--version", action="version", version=f"gconv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="<command>")
    sp = sub.add_parser("backends", help="show which implementation each op uses, and why")
    sp.set_defaults(func=_cmd_backends)
    sp = sub.add_parser("demo", help="run the main job on built-in data (a few minutes on 2 CPU cores)")
    sp.add_argument("--out", default="out/demo", help="folder for the figure and JSON (default: out/demo)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--quick", action="store_true", help="an even shorter run (for tests; width 100, tau 300)")
    sp.add_argument("--width", type=int, default=None, help="hidden width of the 3 hidden layers (default 300)")
    sp.add_argument("--tau", type=int, default=None, help="EE switch step tau (default 1000; the paper: 2000)")
    sp.add_argument("--exploit-steps", dest="exploit_steps", type=int, default=None,
                    help="L-BFGS exploitation steps after the switch (default 40)")
    sp.add_argument("--base-steps", dest="base_steps", type=int, default=None,
                    help="gradient-descent steps of the base run (default 1200)")
    sp.set_defaults(func=_cmd_demo)
    for register in _extra_subcommands():
        register(sub)
    return p


def _extra_subcommands():
    """Subcommands owned by other subpackages: each module exposes ``add_subcommand(subparsers)``."""
    import importlib
    out = []
    for modname in ("gconv.verify.cli",):
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        out.append(mod.add_subcommand)
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, FileNotFoundError, RuntimeError, MemoryError) as exc:
        print(f"gconv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
