"""Dynamic batching for Python-backend models: requests whose tensors agree in every non-batch
dimension run as one batch; the outputs are split back per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Tensors = dict[str, np.ndarray]


def group_compatible(requests: Sequence[Tensors]) -> list[list[int]]:
    """Indices of `requests` grouped so that each group can be concatenated along axis 0."""
    groups: dict[tuple, list[int]] = {}
    for i, tensors in enumerate(requests):
        key = tuple(sorted((name, t.dtype.str, t.shape[1:]) for name, t in tensors.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_batched(requests: Sequence[Tensors], run: Callable[[Tensors], Tensors]) -> list[Tensors | Exception]:
    """Run `run` once per compatible group; per request its own rows of every output, or the
    exception its group raised (so one bad request never fails requests of another group)."""
    results: list[Tensors | Exception] = [None] * len(requests)  # type: ignore[list-item]
    for group in group_compatible(requests):
        sizes = [next(iter(requests[i].values())).shape[0] for i in group]
        try:
            batch = {name: np.concatenate([requests[i][name] for i in group]) for name in requests[group[0]]}
            outputs = run(batch)
        except Exception as exc:  # reported per request by the caller
            for i in group:
                results[i] = exc
            continue
        bounds = np.cumsum([0] + sizes)
        for j, i in enumerate(group):
            results[i] = {name: out[bounds[j] : bounds[j + 1]] for name, out in outputs.items()}
    return results


def chunked(run: Callable[[Tensors], Tensors], inputs: Tensors, max_batch: int) -> Tensors:
    """`run` over at most `max_batch` rows at a time, outputs concatenated (for callers that hold
    more rows than a model's max_batch_size)."""
    n = next(iter(inputs.values())).shape[0]
    if n <= max_batch:
        return run(inputs)
    parts = [run({k: v[i : i + max_batch] for k, v in inputs.items()}) for i in range(0, n, max_batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
