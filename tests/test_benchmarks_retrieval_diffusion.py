"""The helpers behind the retrieval and diffusion benchmark figures (benchmarks/ is not a package: loaded by path)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from bench_helpers import BENCH, load_benchmark as load


@pytest.fixture(scope="module")
def retrieval():
    return load("bench_retrieval")


@pytest.fixture(scope="module")
def stats():
    return load("diffusion_stats")


@pytest.fixture(scope="module")
def report():
    return load("report_diffusion")


# ------------------------------------------------------------------------------------------------ retrieval

def test_recall_at_counts_shared_ids_per_query(retrieval):
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert retrieval.recall_at(truth, truth[:, ::-1]) == 1.0  # order inside the top-k does not matter
    found = np.array([[1, 9, 8], [4, 5, 7]])
    assert retrieval.recall_at(truth, found) == pytest.approx(3 / 6)
    assert retrieval.recall_at(truth, np.array([[7, 8, 9], [1, 2, 3]])) == 0.0


def test_numpy_topk_matches_brute_force(retrieval):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    full = queries @ gallery.T
    for k, chunk in ((10, 64), (5, 1000), (50, 30)):  # chunks smaller than k, one chunk, many chunks
        scores, ids = retrieval.numpy_topk(gallery, queries, k, chunk)
        expect = np.argsort(-full, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(ids, expect)
        np.testing.assert_allclose(scores, np.take_along_axis(full, expect, axis=1), rtol=1e-6)
        assert np.all(np.diff(scores, axis=1) <= 0)


def test_random_orthonormal_has_orthonormal_columns(retrieval):
    basis = retrieval.random_orthonormal(np.random.default_rng(1), 32, 8)
    assert basis.shape == (32, 8)
    np.testing.assert_allclose(basis.T @ basis, np.eye(8), atol=1e-10)


def test_zipf_sizes_sum_and_decay(retrieval):
    sizes = retrieval.zipf_sizes(100_000, 50, 1.0, np.random.default_rng(0))
    assert sizes.sum() == 100_000 and len(sizes) == 50
    # P(j) ~ 1/(j+1): the first cluster gets ~22% of the rows, the last ~0.45%
    assert sizes[0] / sizes.sum() == pytest.approx(1 / sum(1 / j for j in range(1, 51)), rel=0.05)
    assert sizes[0] > 20 * sizes[-1]
    flat = retrieval.zipf_sizes(100_000, 50, 0.0, np.random.default_rng(0))
    assert flat.max() < 1.2 * flat.min()  # exponent 0: even sizes


@pytest.fixture(scope="module")
def aniso(retrieval):
    return retrieval.anisotropic(6000, 200, 24, seed=3, dim=64, rank=8)


def test_anisotropic_shapes_labels_and_norms(aniso):
    g, q = aniso["gallery"], aniso["queries"]
    assert g.shape == (6000, 64) and q.shape == (200, 64)
    assert g.dtype == np.float32 and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(aniso["gallery_labels"], minlength=24), aniso["sizes"])
    assert aniso["sizes"].sum() == 6000
    # shuffled: a prefix of the gallery (the smaller exact sizes) samples every big cluster
    assert len(np.unique(aniso["gallery_labels"][:600])) > 12
    assert np.any(np.diff(aniso["gallery_labels"]) < 0)


def test_anisotropic_clusters_are_uneven_and_anisotropic(aniso):
    sizes = aniso["sizes"]
    assert sizes.max() > 10 * sizes.min()
    g, labels = aniso["gallery"], aniso["gallery_labels"]
    members = g[labels == np.argmax(sizes)]
    spectrum = np.linalg.svd(members - members.mean(axis=0), compute_uv=False) ** 2
    # a decaying spectrum: most variance in a few directions, unlike isotropic noise (flat spectrum)
    assert spectrum[:8].sum() / spectrum.sum() > 0.7
    assert spectrum[0] > 3 * spectrum[7]


def test_anisotropic_is_deterministic_by_seed(retrieval, aniso):
    again = retrieval.anisotropic(6000, 200, 24, seed=3, dim=64, rank=8)
    for key in ("gallery", "queries", "gallery_labels", "query_labels", "sizes"):
        np.testing.assert_array_equal(again[key], aniso[key])
    other = retrieval.anisotropic(6000, 200, 24, seed=4, dim=64, rank=8)
    assert not np.array_equal(other["gallery"], aniso["gallery"])


def test_anisotropic_queries_are_held_out_and_neighbours_cross_clusters(retrieval, aniso):
    g, q = aniso["gallery"], aniso["queries"]
    scores = q @ g.T
    assert scores.max() < 0.9999  # no query is a copy of a gallery row
    top = np.argsort(-scores, axis=1)[:, :10]
    stats = retrieval.neighbour_stats(aniso, top, np.take_along_axis(scores, top, axis=1))
    # most neighbours share the query's cluster, but not all (the isotropic set's is exactly 1.0)
    assert 0.3 < stats["true_top10_in_query_cluster"] < 1.0
    assert stats["queries_with_a_neighbour_elsewhere"] > 0.05
    assert stats["mean_cos_top1"] >= stats["mean_cos_top10"]


# ------------------------------------------------------------------------------------------------ diffusion

def test_steps_to_reach(stats):
    steps, fds = [200, 400, 600, 800], [9.0, 4.0, 2.0, 2.5]
    assert stats.steps_to_reach(steps, fds, 4.0) == 400  # at or below
    assert stats.steps_to_reach(steps, fds, 3.0) == 600
    assert stats.steps_to_reach(steps, fds, 2.5) == 600  # the first, not the last, crossing
    assert stats.steps_to_reach(steps, fds, 1.0) is None


def test_steps_to_reach_has_one_definition(stats, report):
    assert report.steps_to_reach is stats.steps_to_reach
    text = (BENCH / "bench_diffusion.py").read_text()
    assert "def steps_to_reach" not in text and "def steps_to_reach" not in (BENCH / "report_diffusion.py").read_text()


def test_mean_std_is_the_sample_std(stats):
    values = [1.97, 2.13, 2.13]
    mean, std = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert std > np.std(values)  # not the population std
    assert stats.mean_std([1.5]) == (1.5, None)
    with pytest.raises(ValueError):
        stats.mean_std([])


def test_std_conversion_from_population_std(stats):
    values = np.array([1.0, 2.0, 4.0])
    assert stats.std_ddof1_from_ddof0(values.std(), 3) == pytest.approx(values.std(ddof=1))
    assert stats.std_ddof1_from_ddof0(0.3, 1) is None


def test_welch_matches_scipy_and_needs_two_seeds(stats):
    from scipy import stats as sps

    a, b = [1.97, 2.13, 2.13], [1.56, 1.79, 1.65]
    test = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert test["p"] == pytest.approx(ref.pvalue) and test["t"] == pytest.approx(ref.statistic)
    assert 0 < test["p"] < 0.05 and test["t"] > 0
    assert test["df"] == pytest.approx(ref.df, rel=1e-6)
    assert stats.welch(b, a)["t"] == pytest.approx(-test["t"])
    assert stats.welch([1.0], b) is None
    assert stats.welch([1.0, 1.01, 0.99], [1.0, 1.02, 0.98])["p"] > 0.5  # overlapping: not shown
    assert stats.fmt_p(0.0123) == "0.012" and stats.fmt_p(1.2e-5) == "1.2e-05" and stats.fmt_p(None) == "n/a"
    assert stats.fmt_p(0.0) == "0 (underflow, < 1e-300)"


def arm(finals: list[float], curve: list[float], std0: float = 0.1) -> dict:
    return {"steps": [100 * (i + 1) for i in range(len(curve))], "fd_mean": curve, "fd_std": [std0] * len(curve),
            "seeds": len(finals), "final_per_seed": finals}


def test_report_reads_sample_std_and_tests_each_claim(report):
    legacy = arm([1.0, 2.0, 4.0], [5.0, 7 / 3], std0=float(np.std([1.0, 2.0, 4.0])))
    assert report.sample_std(legacy)[-1] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert report.sample_std({**legacy, "fd_std_ddof": 1}) == legacy["fd_std"]
    arms = {"eps/constant": arm([2.0, 2.1, 2.05], [9.0, 4.0, 2.05]),
            "eps/min_snr5": arm([1.5, 1.6, 1.55], [8.0, 2.0, 1.55]),
            "v/constant": arm([1.45, 1.5, 1.4], [9.0, 3.0, 1.45]),
            "v/min_snr5": arm([1.3, 1.6, 1.4], [8.0, 3.0, 1.43])}
    lines, verdict = report.minsnr_section(arms)
    text = "\n".join(lines)
    assert "lower than constant weight's with Welch p < 0.05 for **1 of 2**" in text  # ε shown, v not
    assert verdict["eps"] == pytest.approx(300 / 200)  # reaches 2.05 at step 200 of 300
    p_eps = report.welch([1.5, 1.6, 1.55], [2.0, 2.1, 2.05])["p"]
    assert report.fmt_p(p_eps) in text
    assert any("speed-ups" in item for item in report.MISSING)


def test_bench_diffusion_summary_keeps_seeds_and_sample_std():
    sys.path.insert(0, str(BENCH.parent))
    bench = load("bench_diffusion")
    curves = [([1, 2], [3.0, 1.0]), ([1, 2], [5.0, 2.0]), ([1, 2], [4.0, 4.0])]
    row = bench.summarise({"minsnr": {"eps/constant": curves}})["minsnr"]["eps/constant"]
    assert row["fd_std"][1] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1)) and row["fd_std_ddof"] == 1
    assert row["final_per_seed"] == [1.0, 2.0, 4.0] and row["fd_per_seed"][1] == [5.0, 2.0]
    assert row["fd_mean"] == pytest.approx([4.0, 7 / 3]) and not math.isnan(row["fd_std"][0])


# ------------------------------------------------------------------------------------------------ animation

def test_animation_seed_summary_and_run_names():
    sys.path.insert(0, str(BENCH.parent))
    bench = load("bench_animation")
    assert bench.run_name("full", 0) == "full" and bench.run_name("full", 2) == "full-seed2"
    mean, std = bench.seed_summary([{"a": 1.0, "b": 2}, {"a": 2.0, "b": 4}, {"a": 4.0, "b": 6}])
    assert mean == pytest.approx({"a": 7 / 3, "b": 4.0})
    assert std["a"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert bench.seed_summary([{"a": 0.5}]) == ({"a": 0.5}, {"a": None})


def test_animation_arm_change_applies_on_top_of_the_shared_settings():
    from types import SimpleNamespace

    bench = load("bench_animation")
    args = SimpleNamespace(out_dir="runs/x", gan_dir="g", inversion_dir="", text_model="t", steps=5,
                           set=["loss.contrastive=false", "loss.text=2.0"])
    overrides = bench.arm_overrides("contrastive_text", args, seed=2)
    assert overrides[-1] == "loss.contrastive=true"  # the arm's one change wins over --set
    assert "loss.text=2.0" in overrides and "train.seed=2" in overrides
    assert f"output_dir={Path('runs/x') / 'contrastive_text-seed2'}" in overrides


def test_animation_report_of_a_validation_run_has_no_speed_or_test_pictures(tmp_path):
    bench = load("bench_animation")
    result = {"machine": "m", "gan_dir": "g", "inversion_dir": "inv", "text_model": "t", "steps": 10,
              "overrides": ["loss.text=2.0"], "seeds": 3, "eval_split": "val",
              "eval": {"faces": 2, "clips": 48, "frames": 4}, "ground_truth": {"text_match": 0.9},
              "arms": {"full": {"metrics": {"text_match": 0.25}, "metrics_std": {"text_match": 0.05},
                                "train_sentences": {"text_match": 0.5}, "train_seconds": 1.0}}}
    bench.write_report(result, tmp_path / "val.md")
    text = (tmp_path / "val.md").read_text()
    assert "validation run" in text and "0.250 ± 0.050" in text and "`loss.text=2.0`" in text
    assert "inversion encoder `inv`" in text
    assert "speed" not in text.split("\n", 1)[1] and ".png" not in text
    assert "Welch" not in text  # one seed's values per arm: nothing to test
    result["arms"]["no_text"] = {"metrics": {"text_match": 0.04}, "train_sentences": {}}
    for arm, values in (("full", (0.2, 0.25, 0.3)), ("no_text", (0.04, 0.04, 0.05))):
        result["arms"][arm]["metrics_per_seed"] = [{"text_match": v, "direction": v, "identity_error": 0.1 + v,
                                                    "text_match_p_value": v / 10} for v in values]
    bench.write_report(result, tmp_path / "val.md")
    text = (tmp_path / "val.md").read_text()
    from scipy import stats as scipy_stats

    expected = scipy_stats.ttest_ind([0.2, 0.25, 0.3], [0.04, 0.04, 0.05], equal_var=False).pvalue
    assert f"full vs no_text: text match p = {expected:.3f}" in text
    assert "0.030 (largest of 3 seeds)" in text  # p-values are not averaged
    result.update(eval_split="test", tuned_on_validation=True, speed=[])
    bench.write_report(result, tmp_path / "test.md")
    text = (tmp_path / "test.md").read_text()
    assert "after tuning on validation faces" in text and "animation_contact_sheet.png" in text


def test_animation_validation_faces_avoid_test_and_training_identities():
    from types import SimpleNamespace

    from animation.evaluate import animator_eval_set
    from animation.faces import IDENTITY_FACTORS, identity_split

    bench = load("bench_animation")
    cfg = SimpleNamespace(data=SimpleNamespace(identities=500, test_fraction=0.2, seed=0))
    val = bench.validation_eval_set(cfg, 16, faces=4)
    test = animator_eval_set(cfg, 16, 4)
    k = len(IDENTITY_FACTORS)
    ident = lambda rows: {tuple(np.round(r[:k], 6)) for r in rows}  # noqa: E731
    train_ids, held_ids = identity_split(500, 0.2, 0)
    assert ident(val.factors).isdisjoint(ident(test.factors))
    assert ident(val.factors) <= ident(held_ids) and ident(val.factors).isdisjoint(ident(train_ids))
    assert len(val.actions) == len(val.sentences) == 4 * 24 and val.images.shape == (4, 3, 16, 16)
