"""The models' image preprocessing as tensor operations on the engine's device, equal to the
Hugging Face image processors (their PIL backend) pixel for pixel.

A processor resizes a uint8 image with Pillow, rescales to [0, 1] and normalises. Pillow resamples
in fixed point: per output pixel a few taps with integer weights (22 fractional bits), a horizontal
pass rounded to uint8, then a vertical pass rounded to uint8. `resize_u8` reproduces that
arithmetic exactly: the weights are computed as Pillow computes them (float64, same order of
operations), and each pass is a float64 matrix product whose terms are integers below 2**31, so
every sum is exact whatever order the hardware adds in. On CPU tensors Pillow itself is called
(the same numbers, faster there); on a GPU the matrix form runs on the device. The tests hold the
two equal on every crop of the example set, so on either device the pixel values equal the
processors' (max abs difference 0 after the resize; float32 rounding at most after normalising).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ssa.geometry import Box

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images (32 - 8 - 2)
BILINEAR, BICUBIC = 2, 3  # PIL.Image.Resampling values, as processor configs store them
_SUPPORT = {BILINEAR: 1.0, BICUBIC: 2.0}
NORMALISE_BAND_PIXELS = 1 << 20  # pixels rescaled and normalised per step (float64: 24 MB a band)


def _filter(kind: int, x: torch.Tensor) -> torch.Tensor:
    """Pillow's resampling filters on |x| (float64), written in Pillow's order of operations."""
    x = x.abs()
    if kind == BILINEAR:
        return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


@lru_cache(maxsize=8192)
def _taps(in_size: int, out_size: int, kind: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, weights) of one Pillow resampling pass: Pillow's `precompute_coeffs` then
    `normalize_coeffs_8bpc` (Resample.c), in float64 with Pillow's order of operations. Cached: crop
    sizes repeat across masks and images, and each computation is some thirty small kernels."""
    if kind not in _SUPPORT:
        raise ValueError(f"resampling filter {kind} is not supported (bilinear {BILINEAR} or bicubic {BICUBIC})")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[kind] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    f64 = dict(dtype=torch.float64, device=device)
    center = (torch.arange(out_size, **f64) + 0.5) * scale
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    xmax = torch.clamp(torch.trunc(center + support + 0.5), max=in_size) - xmin
    taps = torch.arange(ksize, **f64)
    weights = _filter(kind, (taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = torch.where(taps[None, :] < xmax[:, None], weights, torch.zeros_like(weights))
    total = torch.zeros(out_size, **f64)
    for k in range(ksize):  # Pillow sums the taps in order; keep its rounding
        total = total + weights[:, k]
    weights = torch.where(total[:, None] != 0, weights / total[:, None], weights)
    unit = float(1 << PRECISION_BITS)
    fixed = torch.where(weights < 0, torch.trunc(-0.5 + weights * unit), torch.trunc(0.5 + weights * unit))
    # taps past xmax carry weight 0 (and may point at a clamped row already used: added, never overwriting)
    rows = (xmin[:, None] + taps[None, :]).long().clamp(max=in_size - 1).reshape(-1)
    columns = torch.arange(out_size, device=device).repeat_interleave(ksize)
    return rows, columns, fixed.reshape(-1)


def resample_matrix(in_size: int, out_size: int, kind: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(in_size, out_size) float64 integer weights of one Pillow resampling pass, column j holding
    output pixel j's taps (22 fractional bits)."""
    rows, columns, weights = _taps(in_size, out_size, kind, str(device))
    matrix = torch.zeros(in_size, out_size, dtype=torch.float64, device=device)
    return matrix.index_put_((rows, columns), weights, accumulate=True)


def _round_pass(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: (acc + 2**21) >> 22, clipped to 0..255."""
    return torch.floor((acc + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp_(0, 255)


def resize_u8(image: torch.Tensor, size: tuple[int, int], kind: int, kernel: str = "auto") -> torch.Tensor:
    """Resize an (h, w, 3) uint8 tensor to `size` = (H, W) exactly as Pillow's `Image.resize`.

    Returns (H, W, 3) uint8 on the input's device. kernel: "pil" (Pillow, CPU tensors only),
    "tensor" (the matrix form, any device) or "auto" (Pillow on the CPU, the matrix form elsewhere).
    """
    h, w = image.shape[:2]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return image
    if kernel == "auto":
        kernel = "pil" if image.device.type == "cpu" else "tensor"
    if kernel == "pil":
        from PIL import Image

        resized = Image.fromarray(np.ascontiguousarray(image.numpy())).resize((out_w, out_h), resample=kind)
        return torch.from_numpy(np.asarray(resized).copy())
    x = image.permute(2, 0, 1).to(torch.float64)  # (3, h, w)

    def horizontal(x):
        return _round_pass(x @ resample_matrix(w, out_w, kind, image.device)) if out_w != w else x

    def vertical(x):
        return _round_pass(resample_matrix(h, out_h, kind, image.device).T @ x) if out_h != h else x

    # Pillow (13) runs the vertical pass first when the height shrinks by more than twice what the
    # width does; each pass rounds to uint8, so the order changes the result
    vertical_first = h - out_h > 0 and h - out_h > (w - out_w) * 2
    x = horizontal(vertical(x)) if vertical_first else vertical(horizontal(x))
    return x.to(torch.uint8).permute(1, 2, 0)


@dataclass(frozen=True)
class ImagePlan:
    """One Hugging Face image processor's pixel pipeline, read from its settings: resize (Pillow
    filter, fixed size or shortest edge with an optional longest edge), optional centre crop,
    rescale, normalise. Settings it cannot reproduce are refused when the plan is made."""

    resize: dict | None  # the processor's `size` ({"height", "width"} or {"shortest_edge"[, "longest_edge"]})
    resample: int
    crop: tuple[int, int] | None  # centre crop (height, width)
    rescale: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_processor(cls, image_processor, resize: bool = True) -> ImagePlan:
        p = image_processor
        if getattr(p, "do_pad", False):
            raise ValueError(f"{type(p).__name__}: padding is not supported by the device preprocessing")
        size = dict(p.size) if resize and p.do_resize else None
        if size is not None and not ({"height", "width"} <= set(k for k, v in size.items() if v)
                                     or size.get("shortest_edge")):
            raise ValueError(f"{type(p).__name__}: size {size} is not supported by the device preprocessing")
        crop = (p.crop_size["height"], p.crop_size["width"]) if getattr(p, "do_center_crop", False) else None
        norm = p.do_normalize
        return cls(resize=size, resample=int(p.resample), crop=crop,
                   rescale=float(p.rescale_factor) if p.do_rescale else None,
                   mean=tuple(map(float, p.image_mean)) if norm else None,
                   std=tuple(map(float, p.image_std)) if norm else None)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after the resize, as the processor computes it."""
        if self.resize is None:
            return height, width
        from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio

        s = self.resize
        if s.get("shortest_edge") and s.get("longest_edge"):
            size = get_size_with_aspect_ratio((height, width), s["shortest_edge"], s["longest_edge"])
        elif s.get("shortest_edge"):
            shape = np.broadcast_to(np.uint8(0), (3, height, width))  # sizes only: no pixels allocated
            size = get_resize_output_image_size(shape, size=s["shortest_edge"], default_to_square=False,
                                                input_data_format="channels_first")
        else:
            return s["height"], s["width"]
        # a strip thinner than 1 : longest / shortest (1 x 9000 for OneFormer COCO's 800 / 1333) would
        # be sized to 0 rows by the processor, which then fails; it keeps one row instead
        return max(1, int(size[0])), max(1, int(size[1]))

    def pixels(self, image: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
        """(3, h', w') float32 model input from one (h, w, 3) uint8 image tensor, on its device."""
        x = resize_u8(image, self.resized_size(*image.shape[:2]), self.resample, kernel)
        if self.crop is not None:
            x = _centre_crop(x, self.crop)
        x = x.permute(2, 0, 1)  # (3, h', w') uint8 view
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        rows = max(1, NORMALISE_BAND_PIXELS // max(1, x.shape[2]))
        for r in range(0, x.shape[1], rows):  # a band at a time: a large crop's float64 copy never lives whole
            band = x[:, r : r + rows]
            band = (band.to(torch.float64) * self.rescale).to(torch.float32) if self.rescale is not None else band.float()
            if self.mean is not None:
                mean, std = _constants(self.mean, self.std, str(x.device))
                band = (band - mean) / std
            out[:, r : r + rows] = band
        return out

    def batch(self, image: torch.Tensor, boxes: Sequence[Box], kernel: str = "auto") -> torch.Tensor:
        """(N, 3, h', w') float32: the pixels of each crop `boxes` of an (H, W, 3) uint8 image
        (the plan must give every crop the same size: a fixed size or a centre crop)."""
        if not boxes:
            h, w = self.crop or (self.resize["height"], self.resize["width"])
            return torch.zeros((0, 3, h, w), dtype=torch.float32, device=image.device)
        return torch.stack([self.pixels(crop_tensor(image, b), kernel) for b in boxes])


@lru_cache(maxsize=64)
def _constants(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) float32 mean and std on `device`, made once (not a copy per crop)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None],
            torch.tensor(std, dtype=torch.float32, device=device)[:, None, None])


def crop_tensor(array: torch.Tensor, box: Box) -> torch.Tensor:
    """The (h, w, ...) region of an (H, W, ...) tensor inside the inclusive `box` (a view)."""
    return array[box.y1 : box.y2 + 1, box.x1 : box.x2 + 1]


def _centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop of an (h, w, C) tensor as transformers' `center_crop` (no padding needed after
    a shortest-edge resize to at least the crop size)."""
    h, w = x.shape[:2]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"centre crop {size} larger than the resized image {(h, w)}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]
