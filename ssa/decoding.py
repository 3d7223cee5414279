"""Greedy caption decoding with a key/value cache, batched over rows, each row stopping at its EOS.

The model calls are injected, so the same loop drives ONNX Runtime sessions in-process and the
Triton `blip_caption` model. It reproduces Hugging Face `generate(do_sample=False, num_beams=1,
max_length=L)`: the prompt is the decoder start token, `max_length` counts it, rows that emitted
EOS are padded afterwards, and decoding stops when every row is done.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# prefill(input_ids (N, 1) int64, image_embeds (N, S, D)) -> (logits (N, V), state)
Prefill = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, object]]
# step(input_ids (N, 1) int64, state, keep (N,) int64 row indices) -> (logits (N', V), state)
Step = Callable[[np.ndarray, object, np.ndarray], tuple[np.ndarray, object]]


def greedy_decode(prefill: Prefill, step: Step, image_embeds: np.ndarray, bos: int, eos: int, pad: int,
                  max_length: int) -> np.ndarray:
    """(N, T) int64 token ids, T <= max_length, starting with `bos`; rows end at `eos`, then `pad`.

    `step` receives the indices (into the rows it saw last time) of the rows still decoding, so
    finished rows drop out of the batch and cost nothing.
    """
    n = image_embeds.shape[0]
    ids = np.full((n, max_length), pad, dtype=np.int64)
    ids[:, 0] = bos
    if n == 0 or max_length < 2:
        return ids[:, : min(max_length, 1)]
    active = np.arange(n)  # rows of `ids` still decoding, in the order the model state holds them
    logits, state = prefill(ids[:, :1], image_embeds)
    length = 1
    for t in range(1, max_length):
        tokens = np.argmax(logits, axis=-1).astype(np.int64)
        ids[active, t] = tokens
        length = t + 1
        running = tokens != eos
        if not running.any() or t == max_length - 1:
            break
        keep = np.flatnonzero(running)
        active = active[keep]
        logits, state = step(tokens[keep, None], state, keep)
    return ids[:, :length]

