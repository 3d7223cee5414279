"""Splitting a request that holds more rows than a model's max_batch_size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Tensors = dict[str, np.ndarray]


def chunked(run: Callable[[Tensors], Tensors], inputs: Tensors, max_batch: int) -> Tensors:
    """`run` over at most `max_batch` rows at a time, outputs concatenated (for callers that hold
    more rows than a model's max_batch_size)."""
    n = next(iter(inputs.values())).shape[0]
    if n <= max_batch:
        return run(inputs)
    parts = [run({k: v[i : i + max_batch] for k, v in inputs.items()}) for i in range(0, n, max_batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
