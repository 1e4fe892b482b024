"""regidx: incremental garbage collection for distribution registries."""

__version__ = "0.1.0"
