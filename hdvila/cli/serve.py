"""`hdvila serve`: the search page over an index folder written by `hdvila retrieval index`."""
from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    from hdvila.serve.app import serve
    from hdvila.serve.service import ServeLimits

    limits = ServeLimits(max_query_chars=args.max_query_chars, max_k=args.max_k)
    serve(args.index, model_dir=args.model, host=args.host, port=args.port, limits=limits,
          log_level="warning" if args.quiet else "info")
    return 0


def add_parser(subparsers) -> None:
    s = subparsers.add_parser("serve", help="a web page for text-to-video search over an index folder")
    s.add_argument("--index", required=True, help="folder written by `hdvila retrieval index`")
    s.add_argument("--model", default=None, help="pretrained folder (default: the one that built the index)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-query-chars", type=int, default=200, help="longest query accepted")
    s.add_argument("--max-k", type=int, default=100, help="most results one request may ask for")
    s.set_defaults(func=cmd_serve)
