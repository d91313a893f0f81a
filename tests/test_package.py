"""Package-level contracts: import, backends report, CLI entry."""
import subprocess
import sys

import gconv


def test_backends_report_names_every_implementation():
    rep = gconv.backends()
    assert {"softplus", "ee_head"} <= set(rep)
    for op, info in rep.items():
        assert set(info["active"]) == {"cpu", "cuda"}
        assert set(info["implementations"]) == {"cuda", "triton", "cpp", "torch"}
        assert info["implementations"]["torch"].startswith("available")
        for impl, status in info["implementations"].items():
            # every implementation says either that it is available, or why not
            assert status.startswith("available") or ":" in status or status == "not implemented for this op"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "gconv", "--help"], capture_output=True, text=True, check=True)
    assert "backends" in out.stdout and "demo" in out.stdout


def test_parse_bytes():
    from gconv._utils import parse_bytes
    assert parse_bytes("16GiB") == 16 * 2**30
    assert parse_bytes("500 MB") == 500 * 10**6
    assert parse_bytes(1e9) == 10**9
    assert parse_bytes(None) is None
    import pytest
    for bad in ("lots", "-1GB", 0, float("nan")):
        with pytest.raises(ValueError):
            parse_bytes(bad)
