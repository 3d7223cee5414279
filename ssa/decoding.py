"""Greedy caption decoding with a key/value cache, batched over rows, each row stopping at its EOS.

The model calls are injected, so the same loop drives ONNX Runtime sessions, PyTorch modules and
the Triton `blip_caption` model. It reproduces Hugging Face `generate(do_sample=False,
num_beams=1, max_length=L)`: the prompt is the decoder start token, `max_length` counts it, rows
that emitted EOS are padded afterwards, and decoding stops when every row is done. Token ids and
the cache stay on the device of `image_embeds`; one boolean per step comes to the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# prefill(input_ids (N, 1) int64, image_embeds (N, S, D)) -> (logits (N, V), state)
Prefill = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, object]]
# step(input_ids (N, 1) int64, state, keep (N,) int64 row indices) -> (logits (N', V), state)
Step = Callable[[torch.Tensor, object, torch.Tensor], tuple[torch.Tensor, object]]


def greedy_decode(prefill: Prefill, step: Step, image_embeds: torch.Tensor, bos: int, eos: int, pad: int,
                  max_length: int) -> torch.Tensor:
    """(N, T) int64 token ids on the device of `image_embeds`, T <= max_length, starting with
    `bos`; rows end at `eos`, then `pad`.

    `step` receives the indices (into the rows it saw last time) of the rows still decoding, so
    finished rows drop out of the batch and cost nothing.
    """
    n = image_embeds.shape[0]
    device = image_embeds.device
    ids = torch.full((n, max_length), pad, dtype=torch.int64, device=device)
    ids[:, 0] = bos
    if n == 0 or max_length < 2:
        return ids[:, : min(max_length, 1)]
    active = torch.arange(n, device=device)  # rows of `ids` still decoding, in the model state's order
    logits, state = prefill(ids[:, :1].contiguous(), image_embeds)
    length = 1
    for t in range(1, max_length):
        tokens = torch.argmax(logits, dim=-1).to(torch.int64)
        ids[active, t] = tokens
        length = t + 1
        running = tokens != eos
        if t == max_length - 1 or not bool(running.any()):
            break
        keep = torch.nonzero(running).flatten()
        active = active[keep]
        logits, state = step(tokens[keep, None].contiguous(), state, keep)
    return ids[:, :length]
