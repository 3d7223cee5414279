"""What the engine needs of a profile's processors: the pixel pipelines of the image processors
(as `ssa.pixels.ImagePlan`s, run on the engine's device), the tokenizers, OneFormer's task input.

The processors are loaded from the profile directory, so the plans follow whatever settings a
checkpoint ships (sizes, filters, mean and std); settings the device path cannot reproduce are
refused when the plans are made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssa.pixels import ImagePlan
from ssa.profiles import CLIP_CONTEXT

CHANNELS_LAST = "channels_last"
# the token lengths the text encoders run at: a name of n tokens (its start and end tokens
# included) at the smallest length >= n, its padding cut off. The embedding is the end token's
# output, and attention is causal: it never sees the padding after it, so it is the embedding at
# the full context (77) up to rounding, at a fraction of the work (most names are under 8 tokens).
# One length per name, not the longest of a call: a name's embedding does not depend on which
# names share its call (they are cached by name)
TEXT_BUCKETS = (8, 16, 32, CLIP_CONTEXT)
TEXT_GRAPHS = ("clip_text", "clipseg_text")


@dataclass
class Processors:
    """The processors of a profile directory (no model weights)."""

    oneformer: dict[str, object]  # dataset ("coco" / "ade20k") -> OneFormerProcessor
    blip: object
    clip: object
    clipseg: object
    plans: dict[str, ImagePlan] = field(init=False)
    _task_ids: dict[str, np.ndarray] = field(init=False, default_factory=dict)
    _task_on_device: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.plans = {f"oneformer_{ds}": ImagePlan.from_processor(p.image_processor) for ds, p in self.oneformer.items()}
        self.plans["blip"] = ImagePlan.from_processor(self.blip.image_processor)
        self.plans["clip"] = ImagePlan.from_processor(self.clip.image_processor)
        # CLIPSeg is normalised at the crop's own size, then resized to the engine's side in float
        self.plans["clipseg"] = ImagePlan.from_processor(self.clipseg.image_processor, resize=False)

    @classmethod
    def load(cls, profile_dir: str | Path) -> Processors:
        from ssa.profiles import load_processor

        d = Path(profile_dir)
        return cls(
            oneformer={ds: load_processor(d / f"oneformer_{ds}") for ds in ("coco", "ade20k")},
            blip=load_processor(d / "blip"),
            clip=load_processor(d / "clip"),
            clipseg=load_processor(d / "clipseg"),
        )

    def task_inputs(self, dataset: str, device: torch.device) -> torch.Tensor:
        """(1, 77) int64 token ids of OneFormer's "semantic" task prompt, on `device` (made once)."""
        key = (dataset, str(device))
        if key not in self._task_on_device:
            from ssa.device import to_device

            processor = self.oneformer[dataset]
            ids = processor(images=np.zeros((32, 32, 3), np.uint8), task_inputs=["semantic"], return_tensors="np",
                            input_data_format=CHANNELS_LAST)["task_inputs"]
            # OneFormerProcessor returns task_inputs as a torch tensor whatever return_tensors says
            self._task_on_device[key] = to_device(np.asarray(ids, dtype=np.int64), device, "task_inputs")
        return self._task_on_device[key]

    def clip_text(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """{"input_ids", "attention_mask"}: (N, 77) int64, padded to CLIP's full context (the
        encoders run each row cut to its length in TEXT_BUCKETS: `token_groups`)."""
        return _tokens(self.clip.tokenizer, names)

    def clipseg_text(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return _tokens(self.clipseg.tokenizer, names)

    def caption_text(self, token_ids: Sequence[int]) -> str:
        """A caption from BLIP's generated ids (decoder start, padding and [SEP] dropped)."""
        return self.blip.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()


def _tokens(tokenizer, names: Sequence[str]) -> dict[str, np.ndarray]:
    out = tokenizer(list(names), padding="max_length", max_length=TEXT_BUCKETS[-1], truncation=True,
                    return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int64), "attention_mask": out["attention_mask"].astype(np.int64)}


def check_text_graphs(manifest: dict, export_dir) -> None:
    """Refuse an export whose text encoders take a fixed number of tokens (exported before the
    token axis was dynamic): the engine sends each name at its TEXT_BUCKETS length."""
    fixed = [name for name in TEXT_GRAPHS if name in manifest["models"]
             if any(isinstance(t["dims"][1], int) for t in manifest["models"][name]["inputs"])]
    if fixed:
        raise ValueError(f"{export_dir}: {', '.join(fixed)} take a fixed number of tokens (an older export); "
                         f"re-export them: python -m export --only {','.join(fixed)}")


def token_groups(attention_mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(length, row indices)] of (N, 77) tokenized names: each row at its TEXT_BUCKETS length
    (the smallest that holds its tokens), shortest first; lengths no row needs are left out."""
    counts = np.asarray(attention_mask).sum(axis=1)
    lengths = np.asarray(TEXT_BUCKETS)[np.searchsorted(TEXT_BUCKETS, np.minimum(counts, TEXT_BUCKETS[-1]))]
    return [(int(n), np.flatnonzero(lengths == n)) for n in TEXT_BUCKETS if (lengths == n).any()]
