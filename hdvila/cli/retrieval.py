"""`hdvila retrieval ...`: text-to-video retrieval: finetune, evaluate, index and search."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdvila.cli import add_training_command, print_summary, training_config


def _retrieval_config(args: argparse.Namespace):
    from hdvila.recipes.retrieval import RetrievalConfig

    return training_config(RetrievalConfig, args, [f"model={args.model}"] if getattr(args, "model", None) else [])


def cmd_retrieval_finetune(args: argparse.Namespace) -> int:
    from hdvila.recipes.retrieval import run_finetune

    return print_summary(run_finetune(_retrieval_config(args), resume=args.resume))


def cmd_retrieval_eval(args: argparse.Namespace) -> int:
    from hdvila.retrieval.evaluate import markdown_table
    from hdvila.recipes.retrieval import run_eval

    cfg = _retrieval_config(args)
    results = run_eval(cfg, args.out, progress=not args.quiet)
    print(markdown_table(results))
    print(f"\nresults: {results['files']}")
    return 0


def cmd_retrieval_manifest(args: argparse.Namespace) -> int:
    from data_tools.config import parse_override
    from hdvila.retrieval.annotations import read_annotations, write_build_manifest

    options = {}
    for item in args.option:
        keys, value = parse_override(item)
        options[".".join(keys)] = value
    ann = read_annotations(args.dataset, args.annotations, split=args.split, **options)
    report = write_build_manifest(ann, args.videos, args.out)
    print(json.dumps({k: (v if not isinstance(v, list) or len(v) <= 20 else v[:20] + ["..."])
                      for k, v in report.items()}, indent=2, default=str))
    print(f"next: hdvila data build {args.out} --out SHARDS_DIR")
    return 0 if report.get("videos_written") else 1


def cmd_retrieval_index(args: argparse.Namespace) -> int:
    from hdvila.retrieval.index import IndexParams

    params = IndexParams(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                         nlist=args.nlist, nprobe=args.nprobe, train_size=args.train_size, pq_m=args.pq_m,
                         pq_bits=args.pq_bits, opq=args.opq, coarse_hnsw=args.coarse_hnsw, rerank=args.rerank,
                         on_disk=args.on_disk)
    if args.embeddings:
        from hdvila.retrieval.compressed import EmbeddingFiles, build_ivfpq_folder, read_records

        if args.kind != "ivfpq" or args.shards:
            raise SystemExit("hdvila retrieval index: --embeddings builds --kind ivfpq, without --shards")
        records = read_records(args.records) if args.records else None
        info = build_ivfpq_folder(EmbeddingFiles(args.embeddings), args.out, params, records=records,
                                  info={"model": str(Path(args.model).resolve()) if args.model else None,
                                        "embedding_files": [str(Path(p).resolve()) for p in args.embeddings]},
                                  progress=not args.quiet)
        print(f"indexed {info['count']} vectors ({info['factory']}, {info['memory_bytes_per_vector']} B each in "
              f"memory, {info['disk_bytes_per_vector']} B on disk) into {args.out}")
        return 0
    if not args.model or not args.shards:
        raise SystemExit("hdvila retrieval index: give --model and --shards (or --embeddings with --kind ivfpq)")
    from hdvila.encoder import load_pretrained
    from hdvila.retrieval.clip_index import build_clip_index

    info = build_clip_index(load_pretrained(args.model), args.shards, args.out, kind=args.kind, params=params,
                            model_dir=args.model, batch_size=args.batch_size, num_workers=args.workers,
                            progress=not args.quiet)
    print(f"indexed {info['count']} clips ({info['kind']}, {info['dim']} dims) into {args.out} "
          f"(encode {info['encode_seconds']} s, build {info['build_seconds']} s)")
    return 0


def cmd_retrieval_search(args: argparse.Namespace) -> int:
    from hdvila.encoder import load_pretrained
    from hdvila.retrieval.clip_index import format_hits, search_clips

    encoder = load_pretrained(args.model) if args.model else None
    queries = args.query
    results = search_clips(args.index, queries, k=args.k, encoder=encoder, ef_search=args.ef_search,
                           nprobe=args.nprobe, rerank=args.rerank)
    if args.json:
        print(json.dumps([{"query": q, "hits": h} for q, h in zip(queries, results)], indent=2, default=str))
    else:
        print("\n\n".join(format_hits(q, h) for q, h in zip(queries, results)))
    return 0


def add_parser(subparsers) -> None:
    r = subparsers.add_parser("retrieval", help="text-to-video retrieval: finetune, evaluate, index and search")
    rsub = r.add_subparsers(dest="retrieval_command", required=True)
    rm = rsub.add_parser("manifest", help="annotation file + video folder -> a build manifest whose clips "
                                          "carry the annotation's video ids")
    rm.add_argument("--dataset", required=True, help="msrvtt | didemo | activitynet | lsmdc | jsonl")
    rm.add_argument("--annotations", required=True, nargs="+")
    rm.add_argument("--videos", required=True, help="folder holding the videos (searched recursively)")
    rm.add_argument("--out", required=True, help="manifest .jsonl to write")
    rm.add_argument("--split", default="test")
    rm.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="reader option, e.g. video_list=MSRVTT_train.9k.csv or video_split=test")
    rm.set_defaults(func=cmd_retrieval_manifest)

    rf = add_training_command(rsub, "finetune", "retrieval", cmd_retrieval_finetune,
                              "contrastive finetuning on the shared trainer")
    rf.add_argument("--model", default=None, help="pretrained folder (overrides the config's model)")

    re_ = rsub.add_parser("eval", help="FAISS retrieval evaluation: R@1/5/10/50, MdR, MnR both ways")
    re_.add_argument("--config", required=True, help="retrieval/<dataset> (a config name) or a YAML path")
    re_.add_argument("--model", default=None, help="pretrained folder (overrides the config's model)")
    re_.add_argument("--out", default=None, help="report folder (default output_dir/eval)")
    re_.set_defaults(func=cmd_retrieval_eval)

    ri = rsub.add_parser("index", help="embed the clips of shards (or read embedding files) into an index folder")
    ri.add_argument("--model", default=None, help="pretrained folder (with --embeddings: the one that made them)")
    ri.add_argument("--shards", nargs="+", help="shard paths, globs or brace patterns")
    ri.add_argument("--embeddings", nargs="+", help="[N, D] float16/float32 .npy files to index (--kind ivfpq)")
    ri.add_argument("--records", default=None,
                    help="with --embeddings: JSONL, one object per vector in order (default {row: i})")
    ri.add_argument("--out", required=True, help="index folder to write")
    ri.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf", "ivfpq"))
    ri.add_argument("--hnsw-m", type=int, default=32)
    ri.add_argument("--ef-construction", type=int, default=40,
                    help="HNSW build effort: on 1M clustered vectors 40 caps recall@10 near 0.9; on 100k, "
                         "200 built 4.5x slower and lifted it from 0.986 to 1.0 (docs/benchmarks/retrieval.md)")
    ri.add_argument("--ef-search", type=int, default=64)
    ri.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4*sqrt(N))")
    ri.add_argument("--nprobe", type=int, default=16)
    ri.add_argument("--train-size", type=int, default=262_144, help="IVF k-means sample")
    ri.add_argument("--pq-m", type=int, default=None,
                    help="ivfpq: sub-quantizers, must divide the dimension (default D/8: 64 at 512 dims)")
    ri.add_argument("--pq-bits", type=int, default=4, choices=(4, 8), help="ivfpq: 4 = fast-scan, 8 = classic")
    ri.add_argument("--opq", action="store_true", help="ivfpq: learn an OPQ rotation first (slow to train)")
    ri.add_argument("--coarse-hnsw", action="store_true",
                    help="ivfpq: an HNSW graph picks the lists to probe (for tens of thousands of lists)")
    ri.add_argument("--rerank", type=int, default=100,
                    help="ivfpq: candidates per query rescored from the float16 vectors on disk (0 = off)")
    ri.add_argument("--on-disk", action="store_true", help="ivfpq: inverted lists in a mapped file (8-bit codes)")
    ri.add_argument("--batch-size", type=int, default=16)
    ri.add_argument("--workers", type=int, default=2)
    ri.set_defaults(func=cmd_retrieval_index)

    rs = rsub.add_parser("search", help="top-k clips for text queries")
    rs.add_argument("--index", required=True, help="folder written by `hdvila retrieval index`")
    rs.add_argument("query", nargs="+", help="one or more text queries")
    rs.add_argument("-k", type=int, default=10)
    rs.add_argument("--model", default=None, help="pretrained folder (default: the one that built the index)")
    rs.add_argument("--ef-search", type=int, default=None)
    rs.add_argument("--nprobe", type=int, default=None)
    rs.add_argument("--rerank", type=int, default=None, help="ivfpq: candidates rescored exactly")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_retrieval_search)
