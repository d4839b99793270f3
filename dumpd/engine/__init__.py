"""The page engine: page-granular reads, hook verdicts, cache, single-flight. No sockets."""

from dumpd.engine.engine import Engine

__all__ = ["Engine"]
