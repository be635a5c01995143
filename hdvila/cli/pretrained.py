"""`hdvila pretrained ...`: pretrained folders (the exported models of every recipe)."""
from __future__ import annotations

import argparse


def cmd_pretrained_migrate(args: argparse.Namespace) -> int:
    # the packages register their readers of older folder layouts when imported
    import animation  # noqa: F401
    import diffusion  # noqa: F401
    import hdvila.models  # noqa: F401
    from data_tools.pretrained import PretrainedError, migrate_pretrained

    try:
        out = migrate_pretrained(args.dir, args.out)
    except (PretrainedError, FileNotFoundError, FileExistsError) as exc:
        raise SystemExit(f"hdvila pretrained migrate: {exc}") from None
    print(f"wrote {out}")
    return 0


def add_parser(subparsers) -> None:
    pt = subparsers.add_parser("pretrained", help="pretrained model folders")
    ptsub = pt.add_subparsers(dest="pretrained_command", required=True)
    m = ptsub.add_parser("migrate", help="rewrite a pretrained folder of an older layout in the current format")
    m.add_argument("dir", help="the pretrained folder")
    m.add_argument("--out", default=None, help="write here instead of rewriting DIR in place")
    m.set_defaults(func=cmd_pretrained_migrate)
