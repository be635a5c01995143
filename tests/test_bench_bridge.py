"""benchmarks/bench_bridge.py: counting half-bridges to a level, and a quick end-to-end pass that writes the report
(tiny settings: it checks the plumbing, not the paper's claims)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench_helpers import BENCH, load_benchmark


def test_first_reaching_counts_half_bridges_trained():
    bench = load_benchmark("bench_bridge")
    points = [(0, 1.5), (1, 1.5), (2, 0.9), (3, 0.9), (4, 0.7)]
    assert bench.first_reaching(points, 1.0) == 3  # after half-bridge 2: three trained
    assert bench.first_reaching(points, 1.0, handed_over=True) == 2  # half-bridge 0 was the flow-matching model
    assert bench.first_reaching(points, 0.5) is None
    history = [{"half_bridge": 0, "data_w2": 2.0}, {"half_bridge": 1, "data_w2": 2.0, "prior_w2": 1.0}]
    assert bench.curve(history, "prior_w2") == [(1, 1.0)]


def test_quick_run_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # two runs at a time: the flow-matching starts before the arms that load them, results in seed order
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "0", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--jobs", "2"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert results["quick"] and set(results["arms"]) == {
        "DSB", "SDSB", "DSB-N32", "SDSB-N32", "DSB-2x", "SDSB-2x", "DSB-N32-2x", "SDSB-N32-2x", "DSB-N64-2x",
        "SDSB-N64-2x", "TR-SDSB", "FR-SDSB", "FR-SDSB-simulated", "FM-TR-SDSB", "FM-FR-SDSB"}
    small = json.loads((tmp_path / "runs" / "SDSB-N32-seed0" / "ipf.json").read_text())["config"]
    assert small["steps"] == 32 and small["target"] == "simplified"
    longer = json.loads((tmp_path / "runs" / "SDSB-2x-seed0" / "ipf.json").read_text())["config"]
    assert longer["train"]["max_steps"] == 2 * results["steps"] and longer["steps"] == 16  # the arm's budget wins
    smaller = json.loads((tmp_path / "runs" / "DSB-N64-2x-seed0" / "ipf.json").read_text())["config"]
    assert smaller["steps"] == 64 and smaller["gamma"] == [0.0125, 0.1] and smaller["target"] == "dsb"
    variants = results["analysis"]["sdsb_vs_dsb_variants"]
    assert set(variants) == {"-N32", "-2x", "-N32-2x", "-N64-2x"} and variants["-N32"]["rows"][0]["half_bridge"] == 0
    assert set(results["analysis"]["tr_fr_faster_than_dsb"]) == {"TR-SDSB", "FR-SDSB"}
    fm = results["arms"]["FM-TR-SDSB"]["0"]
    assert fm[0]["half_bridge"] == 0 and "from" in fm[0]  # started from the flow-matching model
    assert results["floors"]["checkerboard_vs_itself_w2"] < results["floors"]["gaussian_vs_checkerboard_w2"]
    report = (tmp_path / "out" / "bridge.md").read_text()
    assert "QUICK RUN" in report and "SDSB against DSB" in report and "coupled cache (ablation)" in report
    assert "N = 32, γ 0.025 -> 0.2" in report and "30 x 2 AdamW steps" in report and "N = 64" in report
    assert "upper 95% bound" in report and "Goal: SDSB no worse than DSB" in report
    assert results["schedule"] == "cosine" and "learning rate cosine" in report
    # rerun two arms only: the others come from the report's json, and the figure is kept when runs are missing
    before = {arm: results["arms"][arm] for arm in ("FR-SDSB", "FM-FR-SDSB")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "0", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--arms", "DSB-N32", "SDSB-N32"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    again = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert set(again["arms"]) == set(results["arms"]) and {a: again["arms"][a] for a in before} == before
    assert again["fm"] == results["fm"] and len(again["final_gap"]["SDSB-N32"]) == 1
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "1", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--arms", "DSB"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0 and "seeds" in proc.stderr  # another seed list: refused, nothing mixed
    assert len(results["final_gap"]["FR-SDSB"]) == 1 and "coupling gap:" in report
    # goal 1's confirmation on a fresh seed: only its two arms train; a seed already used is refused
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "0", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--confirm-seeds", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "fresh" in proc.stderr
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "0", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--confirm-seeds", "1"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    confirmed = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert confirmed["confirmation"]["seeds"] == [1] and set(confirmed["confirmation"]["arms"]) == {
        "DSB-N64-2x", "SDSB-N64-2x"}
    assert not (tmp_path / "runs" / "DSB-seed1").exists() and (tmp_path / "runs" / "SDSB-N64-2x-seed1").exists()
    assert confirmed["arms"] == again["arms"]  # the other arms are kept as they were
    pooled = confirmed["analysis"]["confirmation"]["pooled_rows"][0]
    assert len(pooled["dsb"]) == 2 and pooled["dsb"][1] == confirmed["analysis"]["confirmation"]["rows"][0]["dsb"][0]
    assert "Goal 1 on fresh seeds" in (tmp_path / "out" / "bridge.md").read_text()
    assert (tmp_path / "out" / "bridge_walks.png").stat().st_size > 0
    # the page again from the json alone: the same analysis, nothing trained
    (tmp_path / "out" / "bridge.md").unlink()
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--report-only", "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rewritten = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert rewritten["analysis"]["final"] == again["analysis"]["final"]
    assert "OU-reference bridge from scratch" in (tmp_path / "out" / "bridge.md").read_text()


def test_quick_digits_run_writes_the_report_with_its_references(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge_digits.py"), "--quick", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "bridge_digits.json").read_text())
    translation = results["tasks"]["translation"]["0"]
    assert [h["half_bridge"] for h in translation] == [0, 1]
    assert 0.0 <= translation[-1]["class_kept"] <= 1.0 and translation[-1]["data_fd"] > 0
    assert "class_kept" not in results["tasks"]["gaussian"]["0"][0]  # noise has no class to keep
    refs = results["references"]
    assert refs["train_vs_test_digits"]["data_fd"] < min(refs["identity"]["data_fd"], refs["gaussian_noise"]["data_fd"])
    assert (tmp_path / "out" / "bridge_digits_translation.png").stat().st_size > 0
    assert "QUICK RUN" in (tmp_path / "out" / "bridge_digits.md").read_text()


def _history(w2: list[float], cost: list[float], handed_over: bool = False) -> list[dict]:
    """A made-up run: data W2 and cost after each half-bridge (forward half-bridges repeat the data end)."""
    rows = []
    for n, (w, c) in enumerate(zip(w2, cost)):
        row = {"half_bridge": n, "direction": "backward" if n % 2 == 0 else "forward", "data_w2": w,
               "data_swd": w / 2, "transport_cost": c, "prior_w2": 0.3}
        rows.append({**row, "from": "fm"} if handed_over and n == 0 else row)
    return rows


def test_a_finished_run_of_another_recipe_is_refused(tmp_path):
    import hdvila  # noqa: F401
    from bridge.ipf import BridgeConfig
    from data_tools.config import load_config, to_dict

    bench = load_benchmark("bench_bridge")
    run = tmp_path / "DSB-seed0"
    run.mkdir()
    cfg = load_config(BridgeConfig, "bridge/toy", [f"output_dir={run}", "target=dsb", "optim.schedule=constant"])
    (run / "ipf.json").write_text(json.dumps({"config": to_dict(cfg), "history": []}))
    with pytest.raises(SystemExit, match="schedule: 'constant', now 'cosine'"):
        bench._check_recipe(run, ["target=dsb"])
    bench._check_recipe(run, ["target=dsb", "optim.schedule=constant"])  # the same recipe: reused
    with pytest.raises(SystemExit, match="target: 'dsb', now 'simplified'"):
        bench._check_recipe(run, ["target=simplified", "optim.schedule=constant"])


def test_sdsb_against_dsb_pairs_the_seeds():
    bench = load_benchmark("bench_bridge")
    flat = [10.0] * 2
    # SDSB worse by 0.10-0.12 on every seed: a paired difference that Welch, with this spread, does not see
    arms = {"DSB": {s: _history([w, w], flat) for s, w in enumerate([0.6, 0.9, 1.2])},
            "SDSB": {s: _history([w, w], flat) for s, w in enumerate([0.7, 1.02, 1.31])}}
    (row,) = bench.sdsb_against_dsb(arms, "DSB", "SDSB")
    assert row["half_bridge"] == 0 and row["sdsb_worse"]
    assert row["paired"]["p"] < 0.05 < row["welch"]["p"]
    arms["SDSB"] = {s: _history([w, w], flat) for s, w in enumerate([0.5, 0.8, 1.1])}  # better on every seed
    (row,) = bench.sdsb_against_dsb(arms, "DSB", "SDSB")
    assert not row["sdsb_worse"] and row["paired"]["mean_diff"] == pytest.approx(-0.1)


def test_upper_bound_is_the_one_sided_paired_t_bound():
    bench = load_benchmark("bench_bridge")
    # differences 0.1, 0.2, 0.3: mean 0.2, sample sd 0.1, t(0.95, 2 dof) = 2.919986
    assert bench.upper_bound([1.1, 1.2, 1.3], [1.0, 1.0, 1.0]) == pytest.approx(0.2 + 2.919986 * 0.1 / 3 ** 0.5)
    assert bench.upper_bound([1.0, 1.0], [1.5, 1.5]) == pytest.approx(-0.5)  # no spread: the difference itself


def test_analysis_verdicts_count_only_levels_that_last():
    bench = load_benchmark("bench_bridge")
    assert bench.first_reaching([(0, 0.5), (1, 0.5), (2, 0.9), (3, 0.9)], 0.6) is None  # a dip IPF then lost
    assert bench.first_reaching([(0, 0.5), (1, 0.9), (2, 0.5), (3, 0.5)], 0.6) == 3
    flat = [10.0] * 4
    arms = {
        "DSB": {0: _history([1.0, 1.0, 0.8, 0.8], flat), 1: _history([1.0, 1.0, 0.8, 0.8], flat)},
        "SDSB": {0: _history([1.0, 1.0, 0.8, 0.8], flat), 1: _history([1.1, 1.1, 0.8, 0.8], flat)},
        # TR dips below DSB's level at half-bridge 0 and loses it; FR gets there for good after one half-bridge
        "TR-SDSB": {0: _history([0.5, 0.5, 0.9, 0.9], flat), 1: _history([0.5, 0.5, 0.9, 0.9], flat)},
        "FR-SDSB": {0: _history([0.6, 0.6, 0.6, 0.6], flat), 1: _history([0.7, 0.7, 0.6, 0.6], flat)},
        # FM-TR: cheaper, but its W2 rises past the from-scratch arm's; FM-FR: cheaper at the same W2
        "FM-TR-SDSB": {0: _history([0.5, 0.5, 1.0, 1.0], [3.0, 3.0, 2.0, 2.0], True),
                       1: _history([0.5, 0.5, 1.2, 1.2], [3.0, 3.0, 2.1, 2.1], True)},
        "FM-FR-SDSB": {0: _history([0.55, 0.55, 0.55, 0.55], [3.0, 3.0, 2.5, 2.5], True),
                       1: _history([0.6, 0.6, 0.6, 0.6], [3.2, 3.2, 2.6, 2.6], True)},
    }
    fm = {"FM-TR-SDSB": {"data_w2": [0.5, 0.5], "transport_cost": [3.0, 3.0]},
          "FM-FR-SDSB": {"data_w2": [0.55, 0.6], "transport_cost": [3.0, 3.2]}}
    analysis = bench.analyse({"arms": arms, "fm": fm, "half_bridges": 4}, [0, 1])
    assert analysis["goal1_met"]
    assert analysis["reach_dsb_final"]["TR-SDSB"] == [None, None]
    assert analysis["tr_fr_faster_than_dsb"] == {"TR-SDSB": False, "FR-SDSB": True}
    tr, fr = analysis["fm"]["FM-TR-SDSB"], analysis["fm"]["FM-FR-SDSB"]
    assert not tr["half_or_fewer"] and not tr["lower_cost_not_worse_w2"] and not tr["w2_not_worse_every_seed"]
    assert tr["w2_paired"]["mean_diff"] == pytest.approx(0.6) and tr["half_bridges_to_scratch_final"] == [None, None]
    assert fr["half_or_fewer"] and fr["lower_cost_not_worse_w2"] and fr["w2_not_worse_every_seed"]
    assert fr["half_bridges_to_scratch_final"] == [0, 0] and fr["scratch_reached_own_final"] == [1, 3]
    # against the OU-reference bridge from scratch (SDSB, final mean 0.8, reached for good after 3 half-bridges)
    assert fr["half_bridges_to_ou_final"] == [0, 0] and fr["ou_reached_own_final"] == [3, 3]
    assert fr["half_or_fewer_vs_ou"] and fr["ou_final_w2"] == pytest.approx(0.8)
    assert tr["half_bridges_to_ou_final"] == [None, None] and not tr["half_or_fewer_vs_ou"]
