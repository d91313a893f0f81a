"""Loads the suites' plugin (bench/plugin.py) for plain `python -m pytest bench/...` runs as well."""
from bench.plugin import *  # noqa: F401,F403  (hooks; the fixtures register in pytest_configure)
