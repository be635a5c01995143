"""benchmarks/bench_serve.py: the latency summary, and a short bounded load on 127.0.0.1 that must see no error
(the 20-client, 10 s figures live in docs/benchmarks/serve.md)."""
from __future__ import annotations

import asyncio

import pytest

from bench_helpers import load_benchmark
from hdvila.serve.app import create_app, running_server
from hdvila.serve.service import SearchService

from serve_helpers import build_serving_index


def test_latency_summary_counts_and_percentiles():
    bench = load_benchmark("bench_serve")
    summary = bench.latency_summary([0.001 * i for i in range(1, 101)], errors=2, seconds=4.0)
    assert summary["requests"] == 100 and summary["errors"] == 2 and summary["requests_per_s"] == 25.0
    assert summary["p50_ms"] == pytest.approx(50.5) and summary["p95_ms"] == pytest.approx(95.05)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert bench.latency_summary([], 0, 1.0)["p50_ms"] is None


def test_a_bounded_load_is_served_without_errors(tmp_path):
    bench = load_benchmark("bench_serve")
    folders = build_serving_index(tmp_path)
    with running_server(create_app(SearchService.from_folder(folders["flat"]))) as base:
        for load in bench.LOADS:
            result = asyncio.run(bench.run_load(base, ["a red circle", "a blue square moves up"], clients=6,
                                                seconds=1.5, load=load))
            assert result["errors"] == 0, result["error_examples"]
            assert result["requests"] > 6 and result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]
        broken = asyncio.run(bench.run_load(base.rsplit(":", 1)[0] + ":1", ["x"], clients=2, seconds=0.3))
        assert broken["errors"] > 0 and broken["requests"] == 0  # a refused connection counts as an error
    with pytest.raises(ValueError):
        asyncio.run(bench.run_load(base, ["x"], load="everything"))
