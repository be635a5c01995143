"""Retrieval search speed: exact FAISS flat vs numpy brute force, and HNSW / IVF speed vs recall@10.

Every index is built and searched through `hdvila.retrieval.index` (build_index, search,
set_search_params), so this measures what `hdvila retrieval` runs. All vectors are L2-normalised and scored
by inner product (= cosine).

1. Exact: FAISS flat vs numpy (`queries @ gallery.T` in gallery chunks, top-k by argpartition + sort) at
   several gallery sizes; time per batch of queries, queries/s, and whether both return the same ranks.
2. Approximate on the largest gallery: HNSW (efSearch sweep) and IVF-flat (nprobe sweep, one or more nlist):
   build time, queries/s and recall@10 against the exact flat top-10.
3. Data: the main case is clustered (centres on the unit sphere + isotropic noise, like embeddings of
   near-duplicate and same-topic clips); pure Gaussian vectors, the worst case for any ANN index, are
   reported too.
4. An HNSW efConstruction check at a tenth of the size: is a recall ceiling the graph's or the search's?

Every timing is the best of --repeats runs (the machine is shared). FAISS, numpy's OpenBLAS and torch all
get --threads threads.

Writes docs/benchmarks/retrieval.md, retrieval.json and retrieval_tradeoff.png.
Usage: python benchmarks/bench_retrieval.py [--quick]      (--quick: small galleries, written to a temp dir)
       python benchmarks/bench_retrieval.py --render-only  (rewrite the page and plot from retrieval.json)
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import json
import math
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import load_average, machine_line
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.training.metrics import save_figure
from hdvila.retrieval.index import IndexParams, build_index, default_nlist, search, set_search_params

REPO = Path(__file__).resolve().parent.parent
DIM = 512
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
TIE_TOL = 1e-5  # scores closer than this count as a tie (float32 dot products of 512 dims err ~1e-7)
SEEDS = {"centres": 0, "clustered": 1, "clustered-queries": 2, "gaussian": 3, "gaussian-queries": 4, "anisotropic": 5}


# ------------------------------------------------------------------------------------------------ threads

def _numpy_openblas() -> ctypes.CDLL | None:
    """numpy's bundled OpenBLAS (numpy exposes no thread API of its own)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
    return ctypes.CDLL(libs[0]) if libs else None


def set_threads(n: int) -> dict:
    """Give FAISS (OpenMP), numpy (OpenBLAS) and torch the same thread count; return what each reports."""
    import faiss
    import torch  # imported by the retrieval code users run, so its thread pool exists there too

    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
    report = {"faiss_omp": faiss.omp_get_max_threads(), "torch": torch.get_num_threads(), "numpy_openblas": None}
    blas = _numpy_openblas()
    if blas is not None:
        for suffix in ("64_", "_64_", ""):
            setter = getattr(blas, f"scipy_openblas_set_num_threads{suffix}", None)
            getter = getattr(blas, f"scipy_openblas_get_num_threads{suffix}", None)
            if setter and getter:
                setter(ctypes.c_int(n))
                report["numpy_openblas"] = getter()
                break
    return report


# --------------------------------------------------------------------------------------------------- data

def _normalise(rows: np.ndarray) -> None:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(n: int, centres: np.ndarray, noise_std: float, seed: int, chunk: int = 65536) -> np.ndarray:
    """Each row = a uniformly chosen centre + N(0, noise_std^2 I), then L2-normalised; filled in chunks so
    the float64 temporaries stay small."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, chunk):
        rows = out[start:start + chunk]
        rows[:] = rng.standard_normal(rows.shape, dtype=np.float32) * np.float32(noise_std)
        rows += centres[rng.integers(0, len(centres), len(rows))]
        _normalise(rows)
    return out


def gaussian(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """Isotropic Gaussian rows, L2-normalised: uniform on the sphere, no structure for an index to use."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        rows = out[start:start + chunk]
        rows[:] = rng.standard_normal(rows.shape, dtype=np.float32)
        _normalise(rows)
    return out


def random_orthonormal(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    """[dim, rank] with orthonormal columns, uniformly oriented (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, rank)))
    return q * np.sign(np.diag(r))


def zipf_sizes(n: int, clusters: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Cluster sizes summing to n, drawn multinomially with P(cluster j) proportional to (j + 1)^-exponent."""
    weights = (np.arange(clusters) + 1.0) ** -exponent
    return rng.multinomial(n, weights / weights.sum())


def anisotropic(n: int, n_queries: int, clusters: int, seed: int, *, dim: int = DIM, zipf: float = 1.0,
                rank: int = 48, decay: float = 1.0, global_decay: float = 1.0, spread: float = 0.5,
                siblings: int = 8, sibling_offset: float = 0.3, twist: float = 0.5, floor: float = 0.05,
                query_noise: float = 0.25) -> dict:
    """Embedding-like data: uneven, anisotropic clusters, with queries that are noisy held-out points.

    - topics: N(0, C) with C = Q diag((i + 1)^-global_decay) Q^T for a random rotation Q, then normalised, so
      they crowd into a low-dimensional part of the sphere (real embedding spaces are anisotropic);
    - centres: `siblings` clusters per topic, each the topic + N(0, sibling_offset^2 I / dim), normalised: related
      clusters (sub-topics) overlap, so a query's true neighbours can belong to other clusters;
    - bases: siblings share their topic's random [dim, rank] basis, each turned by `twist` radians towards a
      basis of its own (orthonormalised again);
    - sizes: Zipf(`zipf`) over clusters (a few big topics, a long tail of small ones);
    - cluster j: centre + scale_j * U_j (s * z) + floor * N(0, I / dim), with U_j that basis, s_k proportional to (k + 1)^(-decay / 2) with sum(s^2) = 1 (a decaying spectrum), and
      scale_j = spread * lognormal(0, 0.3) (clusters differ in width too);
    - queries: fresh points of the same mixture (held out: not in the gallery) plus N(0, query_noise^2 I / dim).
    Every row is L2-normalised. Deterministic in `seed`. Returns {"gallery", "queries", "gallery_labels",
    "query_labels", "sizes"}; the gallery's row order is shuffled, so any prefix is a fair sample.
    """
    rng = np.random.default_rng(seed)
    q_global = random_orthonormal(rng, dim, dim)
    global_scale = (np.arange(dim) + 1.0) ** (-global_decay / 2)
    topics = (rng.standard_normal((-(-clusters // siblings), dim)) * global_scale) @ q_global.T
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    # sibling clusters of one topic sit `sibling_offset` apart from its centre: their members interleave
    centres = topics[np.arange(clusters) // siblings] + rng.standard_normal((clusters, dim)) * (
        sibling_offset / math.sqrt(dim))
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    spectrum = (np.arange(rank) + 1.0) ** (-decay / 2)
    spectrum /= np.linalg.norm(spectrum)
    scales = spread * rng.lognormal(0.0, 0.3, clusters)
    sizes = zipf_sizes(n, clusters, zipf, rng)
    query_sizes = zipf_sizes(n_queries, clusters, zipf, rng)
    order = rng.permutation(n)  # gallery position of each generated row
    gallery = np.empty((n, dim), np.float32)
    queries = np.empty((n_queries, dim), np.float32)
    gallery_labels = np.empty(n, np.int32)
    query_labels = np.empty(n_queries, np.int32)
    start = q_start = 0
    for j in range(clusters):
        if j % siblings == 0:
            topic_basis = random_orthonormal(rng, dim, rank)
        # siblings share most of their topic's directions (sub-topics vary along the same axes)
        own = np.linalg.qr(topic_basis * math.cos(twist) + random_orthonormal(rng, dim, rank) * math.sin(twist))[0]
        basis = (own * spectrum * scales[j]).astype(np.float32)  # [dim, rank]
        for count, rows_out, labels_out, offset, extra in (
                (sizes[j], gallery, gallery_labels, start, 0.0), (query_sizes[j], queries, query_labels, q_start,
                                                                  query_noise)):
            if count == 0:
                continue
            # float32 throughout: the float64 temporaries of a big cluster would cost GiBs and time
            rows = rng.standard_normal((count, rank), dtype=np.float32) @ basis.T
            rows += centres[j]
            noise = rng.standard_normal((count, dim), dtype=np.float32)
            noise *= np.float32(math.hypot(floor, extra) / math.sqrt(dim))
            rows += noise
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            where = order[offset:offset + count] if rows_out is gallery else slice(offset, offset + count)
            rows_out[where] = rows
            labels_out[where] = j
        start += sizes[j]
        q_start += query_sizes[j]
    return {"gallery": gallery, "queries": queries, "gallery_labels": gallery_labels, "query_labels": query_labels,
            "sizes": sizes}


def make_dataset(name: str, n: int, n_queries: int, args: argparse.Namespace,
                 clusters: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if name == "anisotropic":
        data = anisotropic(n, n_queries, clusters or args.aniso_clusters, SEEDS["anisotropic"],
                           **aniso_params(args))
        return data["gallery"], data["queries"]
    if name == "clustered":
        centres = gaussian(clusters or args.clusters, DIM, SEEDS["centres"])
        return (clustered(n, centres, args.noise_std, SEEDS["clustered"]),
                clustered(n_queries, centres, args.noise_std, SEEDS["clustered-queries"]))
    return gaussian(n, DIM, SEEDS["gaussian"]), gaussian(n_queries, DIM, SEEDS["gaussian-queries"])


ANISO_DEFAULTS = {"zipf": 1.0, "rank": 48, "decay": 1.0, "global_decay": 1.0, "spread": 0.5, "siblings": 8,
                  "sibling_offset": 0.2, "twist": 0.3, "floor": 0.05, "query_noise": 0.4}


def aniso_params(args: argparse.Namespace) -> dict:
    return {key: getattr(args, f"aniso_{key}", value) for key, value in ANISO_DEFAULTS.items()}


def neighbour_stats(data: dict, true_ids: np.ndarray, true_scores: np.ndarray) -> dict:
    """How the anisotropic set looks to a search: where the exact top-k of each query lives."""
    same = data["gallery_labels"][true_ids] == data["query_labels"][:, None]
    sizes = np.sort(data["sizes"])[::-1]
    return {"true_top10_in_query_cluster": float(same.mean()),
            "queries_with_a_neighbour_elsewhere": float((~same).any(axis=1).mean()),
            "clusters_per_true_top10": float(np.mean([len(np.unique(row)) for row in data["gallery_labels"][true_ids]])),
            "mean_cos_top1": float(true_scores[:, 0].mean()), "mean_cos_top10": float(true_scores[:, -1].mean()),
            "largest_cluster_share": float(sizes[0] / sizes.sum()), "median_cluster_size": float(np.median(sizes)),
            "smallest_cluster_size": int(sizes[-1])}


def describe_data(args: argparse.Namespace) -> dict:
    noise_norm = args.noise_std * math.sqrt(DIM)
    a = aniso_params(args)
    return {
        "anisotropic": (f"{args.aniso_clusters} clusters ({a['siblings']} sub-topic clusters per topic), Zipf({a['zipf']}) "
                        f"sizes; topic centres drawn from a rotated N(0, diag((i+1)^-{a['global_decay']})) and "
                        f"normalised, sibling centres = topic + noise of norm ~{a['sibling_offset']}; each cluster a "
                        f"rank-{a['rank']} Gaussian with spectrum (k+1)^-{a['decay']}, width {a['spread']} x "
                        f"lognormal(0, 0.3), on its topic's basis turned by {a['twist']} rad, plus an isotropic floor "
                        f"of norm {a['floor']}; queries = fresh held-out points of the mixture + noise of norm "
                        f"{a['query_noise']}; all L2-normalised; seed {SEEDS['anisotropic']} "
                        "(`anisotropic()` in the script)"),
        "clustered": (f"{args.clusters} centres drawn uniformly on the unit sphere (normalised N(0, I), seed "
                      f"{SEEDS['centres']}); each vector = a uniformly chosen centre + N(0, {args.noise_std:.4f}^2 I) "
                      f"noise (noise norm ~{noise_norm:.2f} vs centre norm 1), then L2-normalised; gallery seed "
                      f"{SEEDS['clustered']}, queries drawn the same way with seed {SEEDS['clustered-queries']} "
                      f"(fresh samples, not gallery items). Expected cosine of two vectors of one cluster "
                      f"~{1 / (1 + noise_norm ** 2):.2f}, of different clusters ~0"),
        "gaussian": (f"N(0, I) vectors, L2-normalised (uniform on the sphere); gallery seed {SEEDS['gaussian']}, "
                     f"queries seed {SEEDS['gaussian-queries']}"),
    }


# -------------------------------------------------------------------------------------------------- exact

def numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by brute force: each gallery chunk keeps its own top-k, then the candidates are merged."""
    cand_scores, cand_ids = [], []
    for start in range(0, len(gallery), chunk):
        scores = queries @ gallery[start:start + chunk].T  # [Q, chunk]: bounded by the chunk, not the gallery
        keep = min(k, scores.shape[1])
        part = np.argpartition(scores, scores.shape[1] - keep, axis=1)[:, -keep:]
        cand_scores.append(np.take_along_axis(scores, part, axis=1))
        cand_ids.append(part + start)
    scores, ids = np.concatenate(cand_scores, axis=1), np.concatenate(cand_ids, axis=1)
    part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    scores, ids = np.take_along_axis(scores, part, axis=1), np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def agreement(gallery: np.ndarray, queries: np.ndarray, a: tuple, b: tuple) -> dict:
    """Compare two top-k results rank by rank. Scores must match to TIE_TOL; ids must match unless the two
    items tie, judged by their float64 scores against the query (either order of a tie is correct)."""
    (sa, ia), (sb, ib) = a, b
    q = queries.astype(np.float64)[:, None, :]
    true_a = np.einsum("qkd,qkd->qk", gallery[ia].astype(np.float64), q)
    true_b = np.einsum("qkd,qkd->qk", gallery[ib].astype(np.float64), q)
    same_id = ia == ib
    tie = ~same_id & (np.abs(true_a - true_b) <= TIE_TOL)
    score_ok = np.abs(sa.astype(np.float64) - sb) <= TIE_TOL
    ok = score_ok & (same_id | tie)
    return {"same_ids": float(same_id.mean()), "ranks_agree": float(ok.mean()),
            "queries_agree": float(ok.all(axis=1).mean()), "tied_positions": int(tie.sum()),
            "max_score_diff": float(np.abs(sa.astype(np.float64) - sb).max())}


def best_of(fns: dict, repeats: int, burst_s: float = 0.2) -> dict:
    """{name: (best wall seconds, result of the last call)} over `repeats` rounds. Each round gives every
    function a turn, so a burst of load from other users of the machine hits all of them alike; a turn
    repeats a call back to back for `burst_s`, so millisecond calls are timed warm (caches, thread pools)
    rather than straight after the other library's call."""
    best = {name: (math.inf, None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            turn_start = time.perf_counter()
            while True:
                start = time.perf_counter()
                result = fn()
                end = time.perf_counter()
                best[name] = (min(best[name][0], end - start), result)
                if end - turn_start >= burst_s:
                    break
    return best


def exact_row(gallery: np.ndarray, queries: np.ndarray, ks: list[int], args: argparse.Namespace,
              with_numpy: bool) -> tuple[list[dict], dict]:
    """Exact-search rows for one gallery; also returns the flat top-k per k (the ANN ground truth)."""
    start = time.perf_counter()
    index = build_index(gallery, "flat")
    build_s = time.perf_counter() - start
    rows, truth = [], {}
    for k in ks:
        fns = {"faiss": lambda: search(index, queries, k)}
        if with_numpy:
            fns["numpy"] = lambda: numpy_topk(gallery, queries, k, args.numpy_chunk)
        timed = best_of(fns, args.repeats)
        t_faiss, res_faiss = timed["faiss"]
        truth[k] = res_faiss
        row = {"n": len(gallery), "k": k, "queries": len(queries), "faiss_build_s": round(build_s, 3),
               "faiss": {"batch_s": t_faiss, "qps": len(queries) / t_faiss}}
        if with_numpy:
            t_np, res_np = timed["numpy"]
            row["numpy"] = {"batch_s": t_np, "qps": len(queries) / t_np}
            row["faiss_over_numpy"] = t_np / t_faiss
            row["agreement"] = agreement(gallery, queries, res_faiss, res_np)
        rows.append(row)
        print("exact", json.dumps(row), flush=True)
    del index
    gc.collect()
    return rows, truth


# ------------------------------------------------------------------------------------------------ approx

def recall_at(true_ids: np.ndarray, found_ids: np.ndarray) -> float:
    """Mean fraction of the true top-k ids found in the approximate top-k."""
    k = true_ids.shape[1]
    hits = sum(len(np.intersect1d(t, f, assume_unique=True)) for t, f in zip(true_ids, found_ids))
    return hits / (k * len(true_ids))


def sweep(index, queries: np.ndarray, true_ids: np.ndarray, knob: str, values: list[int], exact_qps: float,
          repeats: int) -> list[dict]:
    rows = []
    for value in values:
        set_search_params(index, **{knob: value})
        seconds, (_, ids) = best_of({"search": lambda: search(index, queries, true_ids.shape[1])}, repeats)["search"]
        qps = len(queries) / seconds
        rows.append({knob: value, "batch_s": seconds, "qps": qps, "recall": recall_at(true_ids, ids),
                     "speedup": qps / exact_qps})
        print("  ", json.dumps(rows[-1]), flush=True)
        if rows[-1]["recall"] == 1.0:  # more effort can only be slower at the same recall
            break
    return rows


def approximate(gallery: np.ndarray, queries: np.ndarray, true_ids: np.ndarray, exact_qps: float,
                args: argparse.Namespace) -> list[dict]:
    n = len(gallery)
    results = []
    params = IndexParams(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    start = time.perf_counter()
    index = build_index(gallery, "hnsw", params)
    build_s = time.perf_counter() - start
    print(f"hnsw M={args.hnsw_m} efConstruction={args.ef_construction}: built in {build_s:.1f} s", flush=True)
    results.append({"index": "hnsw", "label": f"HNSW M={args.hnsw_m}, efC={args.ef_construction}",
                    "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "build_s": build_s,
                    "rows": sweep(index, queries, true_ids, "ef_search", args.ef_search, exact_qps, args.repeats)})
    del index
    gc.collect()
    for nlist in args.nlist:
        nlist = default_nlist(n) if nlist == 0 else nlist
        if nlist > n // 39:  # FAISS k-means wants >= 39 training points per list
            print(f"ivf nlist={nlist}: skipped, {n} vectors are too few", flush=True)
            continue
        start = time.perf_counter()
        index = build_index(gallery, "ivf", IndexParams(nlist=nlist))
        build_s = time.perf_counter() - start
        print(f"ivf nlist={nlist}: built in {build_s:.1f} s", flush=True)
        probes = [p for p in args.nprobe if p <= nlist]
        results.append({"index": "ivf", "label": f"IVF-flat nlist={nlist}", "nlist": nlist,
                        "train_size": min(n, IndexParams().train_size), "build_s": build_s,
                        "rows": sweep(index, queries, true_ids, "nprobe", probes, exact_qps, args.repeats)})
        del index
        gc.collect()
    return results


def efc_check(args: argparse.Namespace, name: str) -> dict:
    """HNSW recall vs efConstruction on a 10x smaller gallery with the same items per cluster:
    tells whether a recall ceiling at full size comes from the graph built or from the search effort."""
    n = args.ann_size // 10
    full = args.aniso_clusters if name == "anisotropic" else args.clusters
    clusters = max(1, round(full * n / args.ann_size))
    gallery, queries = make_dataset(name, n, args.queries, args, clusters=clusters)
    flat = build_index(gallery, "flat")
    exact_s, (_, truth) = best_of({"flat": lambda: search(flat, queries, 10)}, args.repeats)["flat"]
    del flat
    exact_qps = len(queries) / exact_s
    builds = []
    for efc in args.efc_check:
        start = time.perf_counter()
        index = build_index(gallery, "hnsw", IndexParams(hnsw_m=args.hnsw_m, ef_construction=efc))
        build_s = time.perf_counter() - start
        print(f"efConstruction check, {n} items, efC={efc}: built in {build_s:.1f} s", flush=True)
        rows = sweep(index, queries, truth, "ef_search", args.ef_search, exact_qps, args.repeats)
        builds.append({"ef_construction": efc, "build_s": build_s, "rows": rows})
        del index
        gc.collect()
    return {"data": name, "n": n, "clusters": clusters, "hnsw_m": args.hnsw_m, "exact_qps": exact_qps,
            "builds": builds}


def fastest_at_target(entry: dict) -> dict | None:
    good = [r for r in entry["rows"] if r["recall"] >= TARGET_RECALL]
    return max(good, key=lambda r: r["qps"]) if good else None


# --------------------------------------------------------------------------------------------------- main

def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


class LoadSampler:
    """Samples the 1-minute load average every `every` s in a daemon thread: mean and max over a run."""

    def __init__(self, every: float = 30.0):
        import threading

        self.samples = [load_average()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)
        self._thread.start()

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(load_average())

    def summary(self) -> dict:
        self._stop.set()
        self.samples.append(load_average())
        return {"start": self.samples[0], "end": self.samples[-1], "mean": sum(self.samples) / len(self.samples),
                "max": max(self.samples), "samples": len(self.samples)}


def merge_previous(results: dict, previous: dict) -> dict:
    """Keep the data sets (and exact rows) of an earlier run that this run did not measure, each labelled with
    the run that measured it."""
    old_run = {"command": previous.get("command"), "machine": previous.get("machine"),
               "minutes": round(previous.get("total_s", 0) / 60, 1), "load_average": previous.get("load_average"),
               "ann_size": previous.get("ann_size")}
    for name, case in previous.get("approximate", {}).items():
        if name not in results["approximate"]:
            results["approximate"][name] = {**case, "run": case.get("run", old_run)}
            results["data"][name] = previous["data"][name]
    checks = previous.get("efc_checks") or ({"clustered": {"data": "clustered", **previous["efc_check"]}}
                                            if previous.get("efc_check") else {})
    for name, check in checks.items():
        results["efc_checks"].setdefault(name, check)
    for name, stats in previous.get("neighbour_stats", {}).items():
        results["neighbour_stats"].setdefault(name, stats)
    if not results["exact"] and previous.get("exact"):
        results["exact"] = previous["exact"]
        results["exact_run"] = previous.get("exact_run", old_run)
    results["clusters"], results["noise_std"] = previous.get("clusters"), previous.get("noise_std")
    return results


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    sampler = LoadSampler()
    threads = set_threads(args.threads)
    ann_n = args.ann_size
    command = "python benchmarks/bench_retrieval.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    results = {"machine": machine_line(), "threads": threads, "quick": args.quick, "command": command,
               "dim": DIM, "queries": args.queries, "repeats": args.repeats, "numpy_chunk": args.numpy_chunk,
               "target_recall": TARGET_RECALL, "target_speedup": TARGET_SPEEDUP, "tie_tol": TIE_TOL,
               "clusters": args.clusters, "noise_std": args.noise_std, "aniso_clusters": args.aniso_clusters,
               "aniso_params": aniso_params(args), "data": describe_data(args),
               "exact": [], "ann_size": ann_n, "approximate": {}, "efc_checks": {}, "neighbour_stats": {}}
    for name in args.datasets:
        main_case = name == args.datasets[0]
        case_start, case_load = time.perf_counter(), LoadSampler()
        sizes = sorted(set(args.exact_sizes) | {ann_n}) if main_case else [ann_n]
        if name == "anisotropic":
            data = anisotropic(max(sizes), args.queries, args.aniso_clusters, SEEDS["anisotropic"],
                               **aniso_params(args))
            gallery, queries = data["gallery"], data["queries"]
        else:
            data = None
            gallery, queries = make_dataset(name, max(sizes), args.queries, args)
        print(f"{name}: data made in {time.perf_counter() - case_start:.0f} s", flush=True)
        truth, exact_qps = None, None
        for n in sizes:
            # the numpy comparison runs on the main case only: exact search speed does not depend on the data
            ks = args.k if main_case and n in args.exact_sizes else [10]
            rows, topk = exact_row(gallery[:n], queries, ks, args, with_numpy=main_case and n in args.exact_sizes)
            for row in rows:
                row["data"] = name
            if main_case and n in args.exact_sizes:
                results["exact"].extend(rows)
            if n == ann_n:
                truth = topk[10][1]
                exact_qps = next(r for r in rows if r["k"] == 10)["faiss"]["qps"]
                if data is not None and n == len(gallery):
                    results["neighbour_stats"][name] = neighbour_stats(data, truth, topk[10][0])
                    print(name, json.dumps(results["neighbour_stats"][name]), flush=True)
        entries = approximate(gallery[:ann_n], queries, truth, exact_qps, args)
        for entry in entries:
            entry["best"] = fastest_at_target(entry)
        results["approximate"][name] = {"n": ann_n, "exact_qps": exact_qps, "indexes": entries}
        del gallery, queries, truth, data
        gc.collect()
        if main_case and name != "gaussian" and args.efc_check:
            results["efc_checks"][name] = efc_check(args, name)
        # each data set says which run measured it and how busy the shared machine was meanwhile
        results["approximate"][name]["run"] = {
            "command": command, "machine": results["machine"], "date": time.strftime("%Y-%m-%d"),
            "minutes": round((time.perf_counter() - case_start) / 60, 1),
            "ann_size": ann_n, "load_average": case_load.summary()}
        print(f"{name} done at {time.perf_counter() - started:.0f} s, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    results["total_s"] = time.perf_counter() - started
    results["load_average"] = sampler.summary()
    results["peak_rss_gib"] = peak_rss_gib()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1k/10k galleries, ANN on 10k, written to a temp dir unless --out is given")
    parser.add_argument("--exact-sizes", type=int, nargs="*", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--ann-size", type=int, default=1_000_000, help="gallery size for HNSW / IVF")
    parser.add_argument("--queries", type=int, default=1000, help="queries per batch")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50], help="k for the exact comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timings are the best of this many runs")
    parser.add_argument("--threads", type=int, default=2, help="for FAISS, numpy's OpenBLAS and torch alike")
    parser.add_argument("--numpy-chunk", type=int, default=16384, help="gallery rows per numpy matmul")
    parser.add_argument("--datasets", nargs="+", default=["anisotropic", "clustered", "gaussian"],
                        choices=["anisotropic", "clustered", "gaussian"], help="the first one is the main case")
    parser.add_argument("--merge", action="store_true",
                        help="keep the data sets in the existing json that this run does not measure")
    parser.add_argument("--aniso-clusters", type=int, default=2000, help="clusters of the anisotropic set")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise-std", type=float, default=1 / math.sqrt(DIM),
                        help="per-dimension noise std around a centre (default 1/sqrt(dim): noise norm ~1)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--nlist", type=int, nargs="+", default=[0, 1024], help="IVF lists; 0 = 4*sqrt(N)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--efc-check", type=int, nargs="*", default=[40, 200],
                        help="efConstruction values for the HNSW check at --ann-size/10 (none: skip)")
    parser.add_argument("--out", default=None, help="default docs/benchmarks (a temp dir with --quick)")
    parser.add_argument("--render-only", action="store_true", help="rewrite md + png from the existing json")
    args = parser.parse_args()
    if args.quick:
        args.exact_sizes, args.ann_size, args.nlist = [1_000, 10_000], 10_000, [0, 64]
        args.aniso_clusters = min(args.aniso_clusters, 40)
    out = Path(args.out or (Path(tempfile.gettempdir()) / "hdvila-bench-retrieval" if args.quick
                            else REPO / "docs" / "benchmarks"))
    out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        results = json.loads((out / "retrieval.json").read_text())
    else:
        results = run(args)
        if args.merge and (out / "retrieval.json").exists():
            results = merge_previous(results, json.loads((out / "retrieval.json").read_text()))
        atomic_write_json(out / "retrieval.json", results)
    plot(results, out / "retrieval_tradeoff.png")
    atomic_write_text(out / "retrieval.md", render(results))
    print(f"wrote {out}/retrieval.md, retrieval.json, retrieval_tradeoff.png "
          f"({results.get('total_s', 0) / 60:.1f} min, peak RSS {results.get('peak_rss_gib', 0):.2f} GiB)")


# ------------------------------------------------------------------------------------------------- report

def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(res["approximate"].items())
    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 4.8), sharey=True, squeeze=False)
    for ax, (name, case) in zip(axes[0], cases):
        for entry, marker in zip(case["indexes"], "osD^v"):
            knob = "ef_search" if entry["index"] == "hnsw" else "nprobe"
            xs, ys = [r["recall"] for r in entry["rows"]], [r["qps"] for r in entry["rows"]]
            ax.plot(xs, ys, marker=marker, label=entry["label"])
            for r in entry["rows"]:
                ax.annotate(str(r[knob]), (r["recall"], r["qps"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.axhline(case["exact_qps"], color="black", linestyle="--", label="exact (FAISS flat)")
        ax.axhline(case["exact_qps"] * res["target_speedup"], color="grey", linestyle=":",
                   label=f"{res['target_speedup']:.0f}x exact")
        ax.axvline(res["target_recall"], color="grey", linestyle=":")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (vs exact top-10)")
        ax.set_title(f"{name} ({ROLES.get(name, '').split(':')[0]}), {case['n']:,} x {res['dim']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"queries/s ({res['threads']['faiss_omp']} threads, log)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Speed vs recall; labels: efSearch (HNSW) / nprobe (IVF)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _yes(flag: bool) -> str:
    return "**yes**" if flag else "**no**"


def _setting(entry: dict, row: dict) -> str:
    return f"efSearch={row['ef_search']}" if entry["index"] == "hnsw" else f"nprobe={row['nprobe']}"


ROLES = {"anisotropic": "main case: embedding-like",
         "clustered": "easy case: equal isotropic clusters, every true neighbour shares the query's centre",
         "gaussian": "worst case for any ANN index, unlike real embeddings"}


def _run_line(name: str, case: dict) -> str:
    run = case.get("run") or {}
    load = run.get("load_average") or {}
    mean = f", mean {load['mean']:.2f}, max {load['max']:.2f}" if "mean" in load else ""
    machine = f" (machine: {run['machine']})" if run.get("machine") else ""
    return (f"`{run.get('command', '?')}`{' on ' + run['date'] if run.get('date') else ''}{machine}: {case['n']:,} x 512, "
            f"{run.get('minutes', '?')} min for the whole run{'' if run.get('date') else ' (all data sets)'}; "
            f"1-minute load average {load.get('start', float('nan')):.2f} at the start, "
            f"{load.get('end', float('nan')):.2f} at the end{mean}")


def render(res: dict) -> str:
    exact = res["exact"]
    cases = res["approximate"]
    main_name = next(iter(cases))
    exact_lines = []
    for r in exact:
        a = r["agreement"]
        exact_lines.append(
            f"| {r['n']:,} | {r['k']} | {r['faiss']['batch_s'] * 1e3:.1f} | {r['faiss']['qps']:,.0f} | "
            f"{r['numpy']['batch_s'] * 1e3:.1f} | {r['numpy']['qps']:,.0f} | {r['faiss_over_numpy']:.2f}x | "
            f"{a['same_ids']:.4f} | {a['ranks_agree']:.4f} ({a['tied_positions']} ties) | {a['max_score_diff']:.1e} |")
    goal_lines = []
    if exact:
        worst = min(exact, key=lambda r: r["faiss_over_numpy"])
        faster = sum(r["faiss_over_numpy"] >= 1.0 for r in exact)
        agree = min(r["agreement"]["ranks_agree"] for r in exact)
        goal_lines += [
            f"| exact: FAISS flat at least as fast as numpy, every size and k | slowest ratio "
            f"{worst['faiss_over_numpy']:.3f}x ({worst['n']:,} items, k={worst['k']}); FAISS at least as fast in "
            f"{faster} of {len(exact)} cases | {_yes(worst['faiss_over_numpy'] >= 1.0)} |",
            f"| exact: same ranks as numpy (ids equal or tied, scores to {res['tie_tol']:g}) | lowest agreement "
            f"{agree:.4f} | {_yes(agree == 1.0)} |"]
    best_lines, sweep_blocks, build_lines = [], [], []
    for name, case in cases.items():
        for e in case["indexes"]:
            b = e["best"]
            top = max(e["rows"], key=lambda r: r["recall"])
            build_lines.append(f"| {name} | {case['n']:,} | {e['label']} | {e['build_s']:.1f} |")
            if b:
                best_lines.append(f"| {name} | {case['n']:,} | {e['label']} | {_setting(e, b)} | {b['recall']:.3f} | "
                                  f"{b['qps']:,.0f} | {b['speedup']:.1f}x |")
            else:
                best_lines.append(f"| {name} | {case['n']:,} | {e['label']} | none reaches {res['target_recall']} "
                                  f"(best: {_setting(e, top)}) | {top['recall']:.3f} | {top['qps']:,.0f} | "
                                  f"{top['speedup']:.1f}x |")
            met = bool(b) and b["speedup"] >= res["target_speedup"]
            detail = (f"{_setting(e, b)}: recall@10 {b['recall']:.3f}, {b['speedup']:.1f}x exact" if b
                      else f"highest recall@10 in the sweep {top['recall']:.3f} ({_setting(e, top)})")
            role = "" if name == main_name else f" ({ROLES.get(name, name).split(':')[0].split(' for')[0]}, for reference)"
            goal_lines.append(f"| {name} ({case['n']:,}){role}: {e['label']} >= {res['target_speedup']:.0f}x exact "
                              f"queries/s at recall@10 >= {res['target_recall']} | {detail} | {_yes(met)} |")
        rows = []
        for e in case["indexes"]:
            for r in e["rows"]:
                rows.append(f"| {e['label']} | {_setting(e, r)} | {r['recall']:.3f} | {r['batch_s'] * 1e3:.1f} | "
                            f"{r['qps']:,.0f} | {r['speedup']:.1f}x |")
        sweep_blocks.append(
            f"### {name} ({case['n']:,} x {res['dim']}; exact FAISS flat: {case['exact_qps']:,.0f} queries/s)\n\n"
            "| index | setting | recall@10 | ms / batch | queries/s | vs exact |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows))

    nl = chr(10)
    data_lines = [f"- **{name}** ({ROLES.get(name, '')}): {res['data'][name]}." for name in cases]
    run_lines = [f"- **{name}**: {_run_line(name, case)}." for name, case in cases.items()]
    busy = [name for name, case in cases.items()
            if (case.get("run") or {}).get("load_average", {}).get("mean", 0) > 2 * res["threads"]["faiss_omp"]]
    if busy:  # recall does not depend on load; times and speed-ups do
        run_lines.append(f"\n**Timing caveat ({', '.join(busy)})**: the mean load was more than twice this "
                         "benchmark's threads, so other jobs took most of the CPU. Recall figures are unaffected; "
                         "times, queries/s and speed-ups are noisy (e.g. a setting can look faster than a cheaper "
                         "one) and should be read as rough, not compared across data sets.")
    stats_block = ""
    for name, st in res.get("neighbour_stats", {}).items():
        stats_block += (
            f"\nWhat the exact top-10 of the {name} queries looks like ({cases[name]['n']:,} items): "
            f"{st['true_top10_in_query_cluster']:.1%} of the true neighbours share the query's cluster, "
            f"{st['queries_with_a_neighbour_elsewhere']:.1%} of queries have at least one in another cluster, "
            f"{st['clusters_per_true_top10']:.2f} clusters per top-10 on average; mean cosine of the nearest "
            f"{st['mean_cos_top1']:.2f}, of the 10th {st['mean_cos_top10']:.2f}. Cluster sizes: the largest holds "
            f"{st['largest_cluster_share']:.1%} of the gallery, the median {st['median_cluster_size']:.0f} items, "
            f"the smallest {st['smallest_cluster_size']}. (On the easy isotropic set every true neighbour shares "
            "the query's centre.)\n")
    exact_source = res.get("exact_run")
    exact_note = (f"These rows come from an earlier run (`{exact_source['command']}`, on the clustered data; exact "
                  "search time does not depend on the data)." if exact_source else "")
    efc_block = "".join(render_efc_check(check) for check in res.get("efc_checks", {}).values())
    t = res["threads"]
    return f"""# Retrieval search: exact and approximate FAISS indexes

Command: `{res['command']}` (writes this page, `retrieval.json` and `retrieval_tradeoff.png`;
`--render-only` rewrites the page and plot from the json; `--merge` keeps the data sets of the existing json
that a run does not measure, each labelled below with the run that measured it).
Machine: {res['machine']}; no GPU. The machine is shared: other jobs ran during these measurements, and
each data set's run records the load average (this benchmark adds up to {t['faiss_omp']}).
Threads: FAISS OpenMP {t['faiss_omp']}, numpy's OpenBLAS {t['numpy_openblas']}, torch {t['torch']} (the same count for all).
Every time is the best over {res['repeats']} rounds of a batch of {res['queries']} queries (earlier runs: see each
command); FAISS and numpy take turns within a round, and a turn repeats calls shorter than 0.2 s back to
back, so they are timed warm. Build times are single runs. Sweeps stop at the first setting with
recall@10 = 1.0. Indexes are built and searched with `hdvila.retrieval.index` (`build_index`,
`search`, `set_search_params`), inner product on L2-normalised {res['dim']}-d float32 vectors.

## Data

{nl.join(data_lines)}

Which run measured each:

{nl.join(run_lines)}
{stats_block}
## Goals

| goal | result | met |
|---|---|---|
{nl.join(goal_lines)}

## Exact search: FAISS flat vs numpy brute force

numpy: `queries @ gallery.T` over gallery chunks of {res['numpy_chunk']:,} rows (so memory stays bounded), a
top-k per chunk by `argpartition`, then a merge by `argpartition` + `argsort`. "same ids": fraction of
(query, rank) positions with the identical id; "agree": positions whose scores match to {res['tie_tol']:g} and
whose ids match or tie (the two items' float64 scores within {res['tie_tol']:g}). {exact_note}

| gallery | k | FAISS ms / batch | FAISS queries/s | numpy ms / batch | numpy queries/s | FAISS speed / numpy | same ids | agree | max score diff |
|---|---|---|---|---|---|---|---|---|---|
{nl.join(exact_lines)}

## Approximate search

Recall@10: the fraction of the exact flat top-10 ids found in the index's top-10, averaged over
{res['queries']} queries. Speed-up: queries/s over the exact FAISS flat queries/s on the same gallery.
IVF is IVF-flat, trained by k-means on a sample of at most {IndexParams().train_size:,} vectors; its build time
includes training and adding. nlist 4*sqrt(N) is the helper's default. Each data set was measured at the size
in its row (the embedding-like set at a smaller size than 1M: see "Which run measured each").

Fastest setting with recall@10 >= {res['target_recall']}:

| data | gallery | index | setting | recall@10 | queries/s | vs exact |
|---|---|---|---|---|---|---|
{nl.join(best_lines)}

Build time (single run):

| data | gallery | index | build s |
|---|---|---|---|
{nl.join(build_lines)}

![queries/s vs recall@10](retrieval_tradeoff.png)

{(nl + nl).join(sweep_blocks)}
{efc_block}
## Reading

- Embedding-like data (anisotropic): clusters are uneven, stretched along a few directions of their own, and
  sub-topic clusters overlap, so IVF's k-means cells do not coincide with clusters: a big or elongated
  cluster spans several lists and a query near a boundary needs several probes. That is why IVF at nprobe=1
  is far from recall 1.0 here, unlike on the easy set. Compare indexes on this set.
- Easy isotropic clusters: IVF routes a query to the list(s) holding its cluster and scans only those, so a
  few probes find the whole true top-10; HNSW has to tell apart the members of the query's cluster, which
  (isotropic noise in all {res['dim']} dimensions) are nearly equidistant from each other and from the query.
  This set flatters IVF and is hard for HNSW; it is kept as a labelled easy case.
- Gaussian data: every item is about equally far from a query (cosines ~N(0, 1/{res['dim']})), the true
  top-10 barely stands out, and any ANN index has to scan a large part of the gallery to find it. A floor,
  not what to expect on real embeddings.
"""


def render_efc_check(check: dict) -> str:
    lines = []
    for b in check["builds"]:
        for r in b["rows"]:
            lines.append(f"| {b['ef_construction']} | {b['build_s']:.1f} | {r['ef_search']} | {r['recall']:.3f} | "
                         f"{r['qps']:,.0f} | {r['speedup']:.1f}x |")
    first, last = check["builds"][0], check["builds"][-1]
    cost = (f" A higher efConstruction costs {last['build_s'] / first['build_s']:.1f}x the build time "
            f"(efConstruction {first['ef_construction']} -> {last['ef_construction']})."
            if len(check["builds"]) > 1 else "")
    ceilings = "; ".join(f"efConstruction={b['ef_construction']}: best recall@10 "
                         f"{max(r['recall'] for r in b['rows']):.3f}, build {b['build_s']:.1f} s"
                         for b in check["builds"])
    return f"""
### HNSW efConstruction check ({check.get('data', 'clustered')}: {check['n']:,} items, {check['clusters']} clusters)

The same distribution at a tenth of the size, with a tenth of the clusters so a cluster holds as
many items as at full size; M={check['hnsw_m']}, exact FAISS flat {check['exact_qps']:,.0f} queries/s.
If recall@10 stops rising with efSearch, the graph built is the limit, not the search effort.
{ceilings}.{cost}

| efConstruction | build s | efSearch | recall@10 | queries/s | vs exact |
|---|---|---|---|---|---|
{chr(10).join(lines)}
"""


if __name__ == "__main__":
    main()
