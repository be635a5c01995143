"""Shared data layer: ingest (probe, transcripts, cut, shards) and loading (decoders, samplers, pipelines).

This package is the floor of the platform: it imports no model, trainer or CLI code.
"""
__all__ = ["__version__"]
__version__ = "0.1.0"
