"""What a retrieval figure on the synthetic corpus shows beyond knowing some of the attributes.

Each synthetic clip has four attributes (background, shape, colour, motion). An *attribute oracle* knows a
subset of them from the ground-truth metadata: it ranks the clips that agree with the query on that subset
first, in random order, then the rest. Its recall is computed exactly (expectation over the random
tie-breaking), for every subset that leaves at least one attribute out; the empty subset is chance. A model
beats an oracle only if it uses what the oracle does not know; the p-value is the probability that the oracle,
tie-breaking at random, gets at least as many queries right at rank 1 as the model did (exact, Poisson-binomial).

    report = composition_report(similarity, attributes)   # similarity [queries, clips], query i = clip i
    print(composition_markdown(report))

The error table takes every query whose top-ranked clip is wrong and counts which attributes differ between
the query's clip and that top-ranked clip. The twin test asks, per attribute, how often the model scores the
query's own clip above a *twin*: a clip that differs from it in that attribute alone (every oracle that
ignores the attribute scores 50%), with an exact two-sided binomial p-value against 50%.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ATTRIBUTES = ("background", "shape", "colour", "motion")
METADATA_FIELDS = {"background": "background", "shape": "shape", "colour": "colour", "motion": "direction"}
RECALL_KS = (1, 5, 10)
MOTION_BLIND = "motion-blind"


def read_event_metadata(path: str | Path) -> list[dict]:
    """The synthetic corpus's metadata.jsonl rows (one per event)."""
    from data_tools.files import read_utf8_text

    rows = []
    for number, line in enumerate(read_utf8_text(path).splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in ("video_id", "start", "end", *METADATA_FIELDS.values()) if f not in row]
        if missing:
            raise ValueError(f"{path}:{number}: event lacks {', '.join(missing)}")
        rows.append(row)
    return rows


def clip_attributes(records: Sequence[dict], events: Sequence[dict]) -> list[dict[str, str]]:
    """The attributes of each gallery clip: the event of its source video whose time span holds the clip's
    middle. `records` are `encode_gallery` records (source path and [start, end] span)."""
    by_video: dict[str, list[dict]] = {}
    for event in events:
        by_video.setdefault(str(event["video_id"]), []).append(event)
    out = []
    for record in records:
        names = (str(record.get("video_id") or ""), Path(str(record.get("source") or "")).stem)
        video = next((name for name in names if name in by_video), names[1])
        span = record.get("span") or []
        if video not in by_video or len(span) != 2:
            raise ValueError(f"clip {record.get('key')!r}: no event metadata for source {record.get('source')!r}")
        middle = (float(span[0]) + float(span[1])) / 2
        hits = [e for e in by_video[video] if float(e["start"]) <= middle < float(e["end"])]
        if len(hits) != 1:
            raise ValueError(f"clip {record.get('key')!r}: {len(hits)} events of {video} hold t={middle:.2f} s")
        out.append({name: str(hits[0][field]) for name, field in METADATA_FIELDS.items()})
    return out


def _keys(attributes: Sequence[dict[str, str]], known: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(a[name] for name in known) for a in attributes]


def positives(attributes: Sequence[dict[str, str]]) -> list[np.ndarray]:
    """Per query (clip i's caption), the clips with all four attributes equal to clip i's."""
    keys = _keys(attributes, ATTRIBUTES)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [np.array(groups[key]) for key in keys]


def expected_recall(candidates: int, positive: int, k: int) -> float:
    """P(a positive is in the top k) when `candidates` clips (holding `positive` positives) lead in random order."""
    if k >= candidates - positive + 1:
        return 1.0
    return 1.0 - math.comb(candidates - positive, k) / math.comb(candidates, k)


def oracle_metrics(attributes: Sequence[dict[str, str]], known: Sequence[str]) -> dict[str, Any]:
    """Expected R@k, mean rank and per-query R@1 probabilities of the oracle that knows `known`."""
    keys = _keys(attributes, known)
    counts: dict[tuple[str, ...], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    pos = [len(p) for p in positives(attributes)]
    n = [counts[key] for key in keys]
    out: dict[str, Any] = {"known": list(known)}
    for k in RECALL_KS:
        out[f"R@{k}"] = 100.0 * float(np.mean([expected_recall(c, p, k) for c, p in zip(n, pos)]))
    out["MnR"] = float(np.mean([(c + 1) / (p + 1) for c, p in zip(n, pos)]))  # expected first-positive rank
    out["_p_top1"] = [expected_recall(c, p, 1) for c, p in zip(n, pos)]
    return out


def at_least_probability(hits: int, probabilities: Sequence[float]) -> float:
    """P(sum of independent Bernoulli(p_i) >= hits): exact, by dynamic programming over the queries."""
    dist = np.zeros(len(probabilities) + 1)
    dist[0] = 1.0
    for p in probabilities:
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return float(min(1.0, dist[hits:].sum()))


def model_ranks(similarity: np.ndarray, attributes: Sequence[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1-based) of the best positive per query, and the top-ranked clip per query."""
    sim = np.asarray(similarity, dtype=np.float64)
    ranks = np.empty(len(sim), dtype=np.int64)
    for i, pos in enumerate(positives(attributes)):
        best = sim[i, pos].max()
        ranks[i] = 1 + int((sim[i] > best).sum())  # ties count for the query (optimistic), as the eval does
    return ranks, sim.argmax(axis=1)


def error_table(attributes: Sequence[dict[str, str]], top1: Sequence[int]) -> dict[str, Any]:
    """For each query whose top-1 clip is wrong: which attributes differ between its clip and the top-1."""
    wrong = [(i, int(j)) for i, j in enumerate(top1) if _keys([attributes[i]], ATTRIBUTES) !=
             _keys([attributes[int(j)]], ATTRIBUTES)]
    differs = {name: 0 for name in ATTRIBUTES}
    only = {name: 0 for name in ATTRIBUTES}
    patterns: dict[str, int] = {}
    for i, j in wrong:
        diff = [name for name in ATTRIBUTES if attributes[i][name] != attributes[j][name]]
        for name in diff:
            differs[name] += 1
        if len(diff) == 1:
            only[diff[0]] += 1
        label = "+".join(diff)
        patterns[label] = patterns.get(label, 0) + 1
    return {"queries": len(top1), "wrong_top1": len(wrong), "differs_in": differs, "differs_only_in": only,
            "patterns": dict(sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0])))}


def twin_test(similarity: np.ndarray, attributes: Sequence[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per attribute: pairs (query, twin clip differing in that attribute alone), the share where the query's
    own clip scores higher (ties count half), and the two-sided binomial p-value against 50%."""
    from scipy.stats import binomtest

    sim = np.asarray(similarity, dtype=np.float64)
    keys = _keys(attributes, ATTRIBUTES)
    out: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(ATTRIBUTES):
        wins = 0.0
        pairs = 0
        for i, pos in enumerate(positives(attributes)):
            own = sim[i, pos].max()
            for j, key in enumerate(keys):
                if key[a] != keys[i][a] and all(key[b] == keys[i][b] for b in range(len(ATTRIBUTES)) if b != a):
                    pairs += 1
                    wins += 1.0 if own > sim[i, j] else 0.5 if own == sim[i, j] else 0.0
        row: dict[str, Any] = {"pairs": pairs, "accuracy": 100.0 * wins / pairs if pairs else float("nan")}
        row["p_value"] = float(binomtest(int(round(wins)), pairs, 0.5).pvalue) if pairs else float("nan")
        out[name] = row
    return out


def composition_report(similarity: np.ndarray, attributes: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Model recall, every attribute oracle (chance included), the strongest motion-blind oracle with the
    p-value of the model beating it, and the error table. Query i is clip i's own caption."""
    sim = np.asarray(similarity)
    if sim.shape != (len(attributes), len(attributes)):
        raise ValueError(f"similarity is {sim.shape}; expected one query per clip ({len(attributes)} clips)")
    ranks, top1 = model_ranks(sim, attributes)
    hits = int((ranks == 1).sum())
    model = {f"R@{k}": 100.0 * float((ranks <= k).mean()) for k in RECALL_KS}
    model.update(MdR=float(np.median(ranks)), MnR=float(ranks.mean()), hits_at_1=hits)
    oracles = []
    for size in range(len(ATTRIBUTES)):
        for known in itertools.combinations(ATTRIBUTES, size):
            o = oracle_metrics(attributes, known)
            o["name"] = "+".join(known) if known else "chance"
            o["p_model_not_better"] = at_least_probability(hits, o.pop("_p_top1"))
            oracles.append(o)
    blind = [o for o in oracles if "motion" not in o["known"]]
    strongest = max(blind, key=lambda o: o["R@1"])
    return {
        "clips": len(attributes), "model": model, "oracles": oracles,
        MOTION_BLIND: {"strongest": strongest["name"], "R@1": strongest["R@1"],
                       "model_beats_all": bool(all(model["R@1"] > o["R@1"] for o in blind)),
                       "p_value": strongest["p_model_not_better"]},
        "errors": error_table(attributes, top1),
        "twins": twin_test(sim, attributes),
        "ranks": ranks.tolist(), "top1": top1.tolist(),
    }


def composition_markdown(report: dict[str, Any]) -> str:
    """The oracle table (model first) and the error table."""
    lines = [f"| ranker ({report['clips']} clips) | R@1 | R@5 | R@10 | MnR | P(oracle >= model at R@1) |",
             "|---|---|---|---|---|---|"]
    m = report["model"]
    lines.append(f"| **model** | **{m['R@1']:.1f}** | **{m['R@5']:.1f}** | **{m['R@10']:.1f}** | {m['MnR']:.1f} | |")
    for o in sorted(report["oracles"], key=lambda o: -o["R@1"]):
        name = "chance" if o["name"] == "chance" else f"oracle: {o['name'].replace('+', ' + ')}"
        lines.append(f"| {name} | {o['R@1']:.1f} | {o['R@5']:.1f} | {o['R@10']:.1f} | {o['MnR']:.1f} | "
                     f"{o['p_model_not_better']:.2g} |")
    e = report["errors"]
    lines += ["", f"wrong top-1: {e['wrong_top1']} of {e['queries']} queries; the top-1 clip differs from the "
              "query's clip in:", "", "| attribute | in (any) | in this alone |", "|---|---|---|"]
    for name in ATTRIBUTES:
        lines.append(f"| {name} | {e['differs_in'][name]} | {e['differs_only_in'][name]} |")
    if "twins" in report:
        lines += ["", "twin test: the query's own clip scored above its twin differing in one attribute alone "
                  "(50% = blind to it):", "", "| attribute | pairs | own clip first | p (vs 50%) |", "|---|---|---|---|"]
        for name, t in report["twins"].items():
            lines.append(f"| {name} | {t['pairs']} | {t['accuracy']:.1f}% | {t['p_value']:.2g} |")
    return "\n".join(lines)


def encode_for_composition(encoder, shards: Sequence[str] | str, metadata: str | Path, progress: bool = False
                           ) -> tuple[np.ndarray, list[dict[str, str]], list[str]]:
    """Encode the clips of `shards` and their own captions: (similarity [clips, clips], attributes, captions)."""
    from .evaluate import ClipIds, EvalConfig, encode_gallery, gallery_loader_config

    loader_cfg = gallery_loader_config(shards, EvalConfig(), encoder.inference.backend, encoder.inference.max_text_len)
    gallery = encode_gallery(encoder.encode_clips, loader_cfg, encoder.sampling, ClipIds("key"), 0, progress)
    captions = [r["caption"] for r in gallery.records]
    text = encoder.encode_text(captions, progress=progress)
    similarity = (np.asarray(text, dtype=np.float32) @ np.asarray(gallery.embeddings, dtype=np.float32).T)
    return similarity, clip_attributes(gallery.records, read_event_metadata(metadata)), captions
