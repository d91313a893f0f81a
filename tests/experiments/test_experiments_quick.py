"""Fast versions of issue 6's five experiments (``--quick``), asserting the papers' qualitative outcomes,
and the main job (``gconv demo --quick``). The full runs and their numbers: docs/experiments.md."""
import json




def quick_args(tmp_path, *seeds):
    return ["--quick", "--no-progress", "--out", str(tmp_path), "--seeds", *map(str, seeds or (0,))]


def _json(tmp_path, name):
    with open(tmp_path / f"{name}.json") as fh:
        return json.load(fh)


def test_sine_wave_gd_stuck_ee_lbfgs_zero(tmp_path, one_thread):
    from examples import sine_wave
    rec = sine_wave.main(quick_args(tmp_path, 0))
    r = rec["runs"][0]
    assert r["base_gd"]["final_error"] > 0.1, "plain GD unexpectedly fits the sine wave"
    assert r["ee_exploration"]["error_at_tau"] > 0.1          # exploration alone is no better
    assert r["ee_exploit_lbfgs"]["final_error"] == 0.0 and r["ee_exploit_lbfgs"]["final_loss"] < 1e-3
    assert r["ee_exploit_lbfgs"]["feature_cache"]
    assert {r["safe_exploration"][k]["verdict"] for k in ("init", "switch")} == {"VERIFIED"}
    assert (tmp_path / "sine_wave.png").stat().st_size > 10_000
    assert _json(tmp_path, "sine_wave")["summary"]["ee_lbfgs_final_error"] == [0.0]


def test_sine_wave_exploit_gd_function_space_matches_torch(tmp_path, one_thread):
    from examples import sine_wave_exploit_gd
    rec = sine_wave_exploit_gd.main(quick_args(tmp_path, 0))
    r = rec["runs"][0]
    # exploitation is linear in θ_(H−1): GD in function space with K = φφᵀ is the wrapper's GD
    assert r["check"]["relative_difference"] < 1e-4, r["check"]
    assert r["K_eigenvalues"]["max"] > 0 and r["largest_stable_lr"] > 0
    at = r["gd"]["at"]
    assert at[min(at, key=int)]["loss"] > at[max(at, key=int)]["loss"]        # GD does make progress
    assert _json(tmp_path, "sine_wave_exploit_gd")["config"]["tau"] == 300


def test_function_space_gd_on_a_separable_problem():
    import numpy as np
    from examples.sine_wave_exploit_gd import function_space_gd
    y = np.array([0.0, 1.0, 1.0, 0.0])
    K = np.eye(4)                                               # well conditioned: a few steps
    out = function_space_gd(K, np.zeros(4), y, lr=1.0, max_steps=1000)
    assert out["first_step_at_zero_error"] == 1
    K = np.diag([1.0, 1.0, 1.0, 1e-6])                           # one tiny eigenvalue: ~1e6× slower on its direction
    out = function_space_gd(K, np.array([0.1, 1.0, 1.0, 0.1]), y, lr=1.0, max_steps=1000)
    assert out["first_step_at_zero_error"] is None and out["at"]["1000"]["error"] == 0.25


def test_two_moons_zero_error_with_q_zero_sine_not(tmp_path, one_thread):
    from examples import two_moons
    rec = two_moons.main(quick_args(tmp_path, 0))
    moons = next(r for r in rec["runs"] if r["data"] == "two_moons")
    sine = next(r for r in rec["runs"] if r["data"] == "sine")
    assert moons["final_error"] == 0.0
    assert moons["Q_T"] == 0 and moons["aligned"] == moons["evaluated"] >= 5
    assert moons["certified_checks"] == moons["evaluated"]     # ALIGNED verdicts are proofs here
    assert sine["final_error"] > 0.1 and sine["Q_T"] == sine["evaluated"]
    assert (tmp_path / "two_moons.png").exists()


def test_p3l_linear_rate_small_n_slower_large_n(tmp_path, one_thread):
    from examples import p3l_linear_rate
    rec = p3l_linear_rate.main(quick_args(tmp_path, 0))
    run = {(r["activation"], r["n"]): r for r in rec["runs"]}
    assert set(run) == {(a, n) for a in ("tanh", "relu") for n in (20, 40, 80)}
    ratio = {k: r["rate_log10_per_1000_steps"]["second_half"] / r["rate_log10_per_1000_steps"]["second_quarter"]
             for k, r in run.items()}
    rate = {k: -r["rate_log10_per_1000_steps"]["second_half"] for k, r in run.items()}
    for act in ("tanh", "relu"):
        small = run[act, 20]
        assert small["final_loss"] < 1e-6 * small["initial_loss"]
        assert ratio[act, 20] > 0.8 and rate[act, 20] > 0                   # n = d: a constant (linear) rate
        assert rate[act, 20] > 2 * rate[act, 80]                            # larger n: slower
        assert small["lambda_min_G"] > 0 and run[act, 40]["lambda_min_G"] < 1e-10   # Corollary 1 needs n ≤ d
    # n = 40 > d (docs/experiments.md §4): linear under ReLU, the rate keeps falling under tanh
    assert ratio["relu", 40] > 0.8 and ratio["tanh", 40] < 0.6
    assert (tmp_path / "p3l_linear_rate.png").exists()


def test_digits_ee_comparable_and_safe_exploration_verified(tmp_path, one_thread):
    from examples import digits_ee
    rec = digits_ee.main(quick_args(tmp_path, 0))
    r = rec["runs"][0]
    assert r["base"]["test_error"] < 0.5 and r["ee"]["test_error"] < 0.5
    assert abs(r["base"]["test_error"] - r["ee"]["test_error"]) < 0.15
    assert {r["ee"]["safe_exploration"][k]["verdict"] for k in ("init", "switch")} == {"VERIFIED"}
    assert r["ee"]["modification"]["kind"] == "merged_last_two"
    assert (tmp_path / "digits_ee.png").exists()


def test_two_phase_digits_expressivity_verified_no_violation(tmp_path, one_thread):
    from examples import two_phase_digits
    rec = two_phase_digits.main(quick_args(tmp_path, 0))
    r = rec["runs"][0]
    assert {r["expressivity"][k]["verdict"] for k in ("init", "switch")} == {"VERIFIED"}
    assert r["violations"] == [] and len(r["rank_history"]) >= 2
    assert r["reference_rank"] == r["rank_samples"] * 10                  # K(w^τ) has full rank n·m_y
    assert r["train_error"] < r["curve"][0][1] - 0.2                      # it trains
    assert (tmp_path / "two_phase_digits.png").exists()


def test_demo_main_job_quick(tmp_path, capsys, one_thread):
    from gconv.cli import main
    rc = main(["demo", "--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    for phrase in ("phase 1 exploration", "switch at t = 300", "phase 2 exploitation", "VERIFIED", "margin: σ_min(φ) ≥"):
        assert phrase in out
    rec = _json(tmp_path, "demo")
    assert rec["ee"]["final_error"] == 0.0 and rec["base_gd"]["final_error"] > 0.1
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    from gconv.cli import main
    assert main(["demo", "--quick", "--tau", "0", "--out", str(tmp_path)]) == 2
    assert "--tau must be >= 1" in capsys.readouterr().err


def test_resume_keeps_finished_runs_and_refuses_other_configs(tmp_path, one_thread, capsys, monkeypatch):
    from examples import p3l_linear_rate
    monkeypatch.setattr(p3l_linear_rate, "QUICK", {**p3l_linear_rate.QUICK, "ns": [20], "steps": 200, "m": 50})
    first = p3l_linear_rate.main(quick_args(tmp_path, 0))
    again = p3l_linear_rate.main(quick_args(tmp_path, 0) + ["--resume"])
    assert "keeping 2 finished run(s)" in capsys.readouterr().out
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in first["runs"]]   # not recomputed
    rec = _json(tmp_path, "p3l_linear_rate")
    rec["config"]["m"] = 7                                   # another configuration: start afresh
    (tmp_path / "p3l_linear_rate.json").write_text(json.dumps(rec))
    p3l_linear_rate.main(quick_args(tmp_path, 0) + ["--resume"])
    assert "another configuration; starting afresh" in capsys.readouterr().out
