"""The device preprocessing equals the Hugging Face processors pixel for pixel: Pillow's
resampler reproduced as tensor operations (the GPU kernel), checked here on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssa.pixels import BICUBIC, BILINEAR, resize_u8

SIZES = [  # (h, w) -> (H, W): up, down, mixed, one pixel, vertical-first and horizontal-first passes
    ((300, 451), (384, 384)), ((37, 81), (384, 384)), ((500, 741), (224, 331)), ((1, 1), (384, 384)),
    ((913, 600), (384, 384)), ((17, 5), (3, 2)), ((2, 700), (384, 384)), ((640, 480), (800, 600)),
    ((1500, 2250), (800, 1200)), ((384, 384), (384, 200)), ((123, 77), (123, 9)),
]


@pytest.mark.parametrize("kind", [BICUBIC, BILINEAR])
@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_tensor_resize_is_pillow_exactly(src, dst, kind):
    image = np.random.default_rng(sum(src) + sum(dst)).integers(0, 256, (*src, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(dst[::-1], resample=kind))
    got = resize_u8(torch.from_numpy(image), dst, kind, kernel="tensor").numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("profile", ["tiny_profile", "light_profile"])
def test_plans_equal_the_processors_on_every_crop(profile, request, example_dir):
    """BLIP, CLIP and OneFormer pixel values from the plans (both kernels) against the processors
    themselves, on every crop the engine makes of the example set: max abs difference 0. The light
    profile's processors are the ones AutoProcessor picks for the published checkpoints'
    configuration files (built offline from a hub-layout snapshot), at their real sizes."""
    tiny_profile = request.getfixturevalue(profile)
    from ssa.dataset import folder_items
    from ssa.geometry import crop, crop_box
    from ssa.params import EngineParams
    from ssa.preprocess import Processors
    from ssa.runner import load_item

    processors, params = Processors.load(tiny_profile), EngineParams()
    hf = {"blip": processors.blip.image_processor, "clip": processors.clip.image_processor}
    worst, crops = 0.0, 0
    for item in list(folder_items(example_dir))[:3]:
        image, _, masks = load_item(item)
        tensor = torch.from_numpy(image)
        for ds in ("coco", "ade20k"):
            expected = processors.oneformer[ds](images=image, task_inputs=["semantic"], return_tensors="np",
                                                input_data_format="channels_last")["pixel_values"][0]
            for kernel in ("pil", "tensor"):
                got = processors.plans[f"oneformer_{ds}"].pixels(tensor, kernel).numpy()
                worst = max(worst, float(np.abs(got - expected).max()))
        for role, scale in (("blip", params.scale_large), ("clip", params.scale_small)):
            boxes = [crop_box(b, scale, image.shape[:2]) for b in masks.bboxes]
            expected = hf[role](images=[crop(image, b) for b in boxes], return_tensors="np",
                                input_data_format="channels_last")["pixel_values"]
            for kernel in ("pil", "tensor"):
                got = processors.plans[role].batch(tensor, boxes, kernel).numpy()
                assert got.shape == expected.shape
                worst = max(worst, float(np.abs(got - expected).max()))
            crops += len(boxes)
    assert crops >= 30
    assert worst == 0.0


def test_unsupported_processor_settings_are_refused(tiny_profile):
    from transformers import AutoProcessor

    from ssa.pixels import ImagePlan

    processor = AutoProcessor.from_pretrained(tiny_profile / "clip").image_processor
    processor.do_pad = True
    with pytest.raises(ValueError, match="padding is not supported"):
        ImagePlan.from_processor(processor)
