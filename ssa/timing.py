"""Seconds spent per stage, for benchmarks (`with timer("clip"): ...`); the default timer does nothing."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class StageTimer:
    """Accumulates wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


class NoTimer:
    @contextmanager
    def __call__(self, stage: str):
        yield


NO_TIMER = NoTimer()
