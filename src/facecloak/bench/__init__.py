"""Benchmarks over the engine: LFW verification, protection, tuning, speed (``facecloak bench``).

They read photos from an explicit ``--data`` folder and write docs only when given ``--results``; the engine
(:mod:`facecloak.core`) never imports this package.
"""

from .common import add_bench_parsers

__all__ = ["add_bench_parsers"]
