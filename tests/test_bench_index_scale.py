"""benchmarks/bench_index_scale.py: its recall measures, its mixture, and a small end-to-end run (the 10M figures
live in docs/benchmarks/index_scale.md)."""
import json

import numpy as np

from bench_helpers import load_benchmark


def test_recall_measures_follow_faiss_definitions():
    bench = load_benchmark("bench_index_scale")
    truth = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    found = np.array([[9, 1, 0, 0, 0, 0, 0, 0, 0, 0], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21]])
    # query 0: its true first (1) is in the top 10, 2 of the true 10 found; query 1: true first missed, 9 found
    assert bench.recall(found, truth) == {"1-recall@10": 0.5, "10-recall@10": round((0.2 + 0.9) / 2, 4)}


def test_the_mixture_is_uneven_seeded_and_on_the_sphere():
    bench = load_benchmark("bench_index_scale")
    mixture = bench.Mixture(dim=32, clusters=20, topics=4, min_latent=2, max_latent=6)
    a, b = mixture.sample(500, stream=1), mixture.sample(500, stream=1)
    assert np.array_equal(a, b) and not np.array_equal(a, mixture.sample(500, stream=2))
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert mixture.weights[0] > 2 * mixture.weights[-1]


def test_a_small_run_writes_its_report(tmp_path):
    bench = load_benchmark("bench_index_scale")
    out = tmp_path / "report"
    assert bench.main(["--vectors", "20000", "--dim", "64", "--queries", "100", "--per-file", "8000",
                       "--builds", "64:16", "--nprobe", "4", "--rerank", "0,100", "--train-size", "8000",
                       "--work", str(tmp_path / "work"), "--out", str(out), "--no-cold"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert len(result["validation"]) == 2 and result["test"]["cold_cache_qps"] is None
    reranked, codes = result["test"]["1-recall@10"], result["test"]["codes_only"]["1-recall@10"]
    assert reranked >= codes and 0 < reranked <= 1
    assert result["chosen"]["rerank"] in (0, 100) and result["exact_qps"] > 0
    assert "Goal (1-recall@10 >= 0.9" in out.with_suffix(".md").read_text()
