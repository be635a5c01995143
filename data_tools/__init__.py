"""The floor of the platform: the data layer (ingest: probe, transcripts, cut, shards; loading: decoders,
samplers, pipelines) and the shared parts every model package builds on (the one trainer and small-fit helper,
registry, pretrained-folder format, cache, EMA, image data, config). It imports no model package and no CLI
code (docs/architecture.md).
"""
__all__ = ["__version__"]
__version__ = "0.1.0"
