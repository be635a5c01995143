"""Logging set-up shared by every command: one format, levels from the CLI or HDVILA_LOG_LEVEL."""
from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


QUIET_LIBRARIES = ("faiss.loader",)


def setup_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("HDVILA_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_hdvila", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._hdvila = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # libraries that narrate their start-up at INFO (faiss lists every SIMD build it tries)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
