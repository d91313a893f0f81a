"""The papers' experiments, one script per experiment (issue 6). Run e.g. ``python examples/sine_wave.py --out DIR``."""
