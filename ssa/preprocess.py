"""Each model's own preprocessing, through the processors saved with the profile.

All inputs are (h, w, 3) uint8 RGB arrays. Processors are told the channel layout, so a
one-pixel crop (1, 1, 3) is never mistaken for a channels-first image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssa.resize import resize_bilinear

CHANNELS_LAST = "channels_last"


@dataclass
class Processors:
    """The processors of a profile directory (no model weights): what the engine needs on the CPU."""

    oneformer: dict[str, object]  # dataset ("coco" / "ade20k") -> OneFormerProcessor
    blip: object
    clip: object
    clipseg: object

    @classmethod
    def load(cls, profile_dir: str | Path) -> Processors:
        from transformers import AutoProcessor

        d = Path(profile_dir)
        return cls(
            oneformer={ds: AutoProcessor.from_pretrained(d / f"oneformer_{ds}") for ds in ("coco", "ade20k")},
            blip=AutoProcessor.from_pretrained(d / "blip"),
            clip=AutoProcessor.from_pretrained(d / "clip"),
            clipseg=AutoProcessor.from_pretrained(d / "clipseg"),
        )

    def oneformer_inputs(self, dataset: str, image: np.ndarray) -> dict[str, np.ndarray]:
        """{"pixel_values": (1, 3, h, w) float32, "task_inputs": (1, 77) int64} for the "semantic" task."""
        out = self.oneformer[dataset](images=image, task_inputs=["semantic"], return_tensors="np",
                                      input_data_format=CHANNELS_LAST)
        # OneFormerProcessor returns task_inputs as a torch tensor whatever return_tensors says
        return {"pixel_values": np.asarray(out["pixel_values"], dtype=np.float32),
                "task_inputs": np.asarray(out["task_inputs"], dtype=np.int64)}

    def blip_pixels(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3, S, S) float32 pixel values of BLIP's processor (resize + normalise)."""
        return self.blip.image_processor(images=list(crops), return_tensors="np",
                                         input_data_format=CHANNELS_LAST)["pixel_values"].astype(np.float32)

    def clip_pixels(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3, 224, 224) float32 pixel values of CLIP's processor (resize, centre crop, normalise)."""
        return self.clip.image_processor(images=list(crops), return_tensors="np",
                                         input_data_format=CHANNELS_LAST)["pixel_values"].astype(np.float32)

    def clipseg_pixels(self, crop: np.ndarray, size: int) -> np.ndarray:
        """(1, 3, size, size) float32: CLIPSeg's normalisation at the crop's own size, then a
        bilinear resize to size x size (as the published engine does with F.interpolate)."""
        normalised = self.clipseg.image_processor(images=[crop], do_resize=False, return_tensors="np",
                                                  input_data_format=CHANNELS_LAST)["pixel_values"]
        return resize_bilinear(normalised.astype(np.float32), (size, size))

    def clip_text(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """{"input_ids", "attention_mask"}: (N, 77) int64, padded to CLIP's full context."""
        return _tokens(self.clip.tokenizer, names)

    def clipseg_text(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return _tokens(self.clipseg.tokenizer, names)

    def caption_text(self, token_ids: Sequence[int]) -> str:
        """A caption from BLIP's generated ids (decoder start, padding and [SEP] dropped)."""
        return self.blip.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()


def _tokens(tokenizer, names: Sequence[str]) -> dict[str, np.ndarray]:
    out = tokenizer(list(names), padding="max_length", max_length=77, truncation=True, return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int64), "attention_mask": out["attention_mask"].astype(np.int64)}
