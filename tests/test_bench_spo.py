"""benchmarks/bench_spo.py: reading curves against compute, the goal's crossing point, and a quick end-to-end pass
that writes the report (tiny settings, so it checks the plumbing, not the claim)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench_helpers import BENCH, load_benchmark

CURVE = {"nfe": [0.0, 100.0, 200.0, 300.0], "crispness": [0.70, 0.74, 0.78, 0.77], "fd": [2.0, 2.5, 3.0, 3.5]}


def test_value_at_interpolates_and_stops_at_the_last_evaluation():
    bench = load_benchmark("bench_spo")
    assert bench.value_at(CURVE, "crispness", 150.0) == pytest.approx(0.76)
    assert bench.value_at(CURVE, "fd", 0.0) == pytest.approx(2.0)
    assert bench.value_at(CURVE, "fd", 301.0) is None


def test_nfe_to_reach_finds_the_first_crossing():
    bench = load_benchmark("bench_spo")
    assert bench.nfe_to_reach(CURVE, "crispness", 0.76) == pytest.approx(150.0)
    assert bench.nfe_to_reach(CURVE, "crispness", 0.775) == pytest.approx(187.5)
    assert bench.nfe_to_reach(CURVE, "crispness", 0.80) is None
    assert bench.nfe_to_reach(CURVE, "crispness", 0.69) == 0.0  # the base already reaches it


def _bench(*args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_spo.py"), "--threads", "1", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_quick_run_writes_the_reports(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _bench("--quick", "--runs", runs, "--out", out, "--arms", "spo", "spo-winner", "trajectory-dpo")
    results = json.loads((out / "spo.json").read_text())
    assert results["quick"] and set(results["runs"]) == {"spo", "spo-winner", "trajectory-dpo"}
    assert set(results["sweep"]["chosen"]) == {"spo", "trajectory-dpo"}
    goal = results["analysis"]["goal"]
    assert len(goal["per_seed"]) == 2 and isinstance(goal["speed_met"], bool)
    report = (out / "spo.md").read_text()
    assert "QUICK RUN" in report and "## The goal" in report
    assert (out / "spo_curves.png").stat().st_size > 0
    assert (out / "spo_samples.png").stat().st_size > 0

    # the FD yardstick on the same base and preference models
    _bench("--tilt", "--quick", "--kl", 10, "--jobs", 1, "--runs", runs, "--out", out, "--budget", results["budget"],
           "--samples", results["samples"], "--val-every", 2)
    tilt = json.loads((out / "spo_tilt.json").read_text())
    assert [r["weight"] for r in tilt["kl_anchor"]["runs"]] == [0.0, 10.0]
    assert "SPO with a KL anchor" in (out / "spo_tilt.md").read_text()
    assert set(tilt["frontier"]) == {"base tilted by the aesthetic", "base tilted by the labellers' utility",
                                     "real digits tilted by the aesthetic"}
    base_points = tilt["frontier"]["base tilted by the aesthetic"]
    assert base_points[0]["gain"] == 0.0 and len(base_points) >= 2
    # the tilt raises what it tilts by: the drawn sets get crisper as the gain asked grows
    assert base_points[-1]["crispness"] > base_points[0]["crispness"]
    assert "FD / base FD" in (out / "spo_tilt.md").read_text()
    assert (out / "spo_tilt.png").stat().st_size > 0

    # one more seed of both continue rules, pooled with the published two
    # (at half the quick budget, which every tiny run reaches whatever pairs its steps keep)
    half = results["budget"] / 2
    _bench("--more-seeds", "3", "--jobs", "1", "--runs", runs, "--out", out, "--budget", half,
           "--samples", results["samples"], "--val-every", 2)
    more = json.loads((out / "spo_continue.json").read_text())
    assert set(more["at_budget"]["spo"]) == {"1", "2", "3"} and more["pooled_test"]["crispness"]["n_a"] == 3
    bench = load_benchmark("bench_spo")
    assert more["at_budget"]["spo"]["1"]["crispness"] == pytest.approx(
        bench.value_at(results["runs"]["spo"]["1"]["curve"], "crispness", half))  # read, not rerun
    assert "all [1, 2, 3]" in (out / "spo_continue.md").read_text()


def test_frontier_fd_interpolates_inside_the_drawn_points_only():
    bench = load_benchmark("bench_spo")
    points = [{"crispness": 0.75, "fd": [3.0, 0.1]}, {"crispness": 0.77, "fd": [4.0, 0.1]},
              {"crispness": 0.79, "fd": [6.0, 0.2]}]
    assert bench.frontier_fd(points, 0.78) == pytest.approx(5.0)
    assert bench.frontier_fd(points, 0.75) == pytest.approx(3.0)
    assert bench.frontier_fd(points, 0.80) is None and bench.frontier_fd([], 0.76) is None
