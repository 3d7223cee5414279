"""Image loading: every image becomes an (H, W, 3) uint8 RGB array, orientation applied.

The published engine read images as BGR and fed them to RGB models; this never does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssa.errors import InputError, read_input

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any PIL mode: 16-bit and float are rescaled, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":  # floats: [0, 1], or [0, max] when larger
            top = max(float(arr.max()), 1.0)
        elif img.mode.startswith("I;16") or arr.max() > 255:
            top = 65535.0
        else:
            top = 255.0
        arr = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


@contextlib.contextmanager
def _readable(source: str | Path | None):
    """Pillow's errors while opening or decoding, as InputError naming `source`."""
    try:
        yield
    except UnidentifiedImageError as exc:
        raise InputError("unreadable image (not a format Pillow can decode, or damaged)", source) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"unreadable image ({type(exc).__name__}: {exc})", source) from exc


def decode_image(data: bytes, source: str | Path | None = None) -> np.ndarray:
    """Decode encoded image bytes (jpg, png, ...) into an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied, so the array is the image as a viewer shows it.
    Raises InputError naming `source` when the bytes are not a readable image.
    """
    if not data:
        raise InputError("image file is empty", source)
    with _readable(source), Image.open(io.BytesIO(data)) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image has zero size {rgb.shape[:2]}", source)
    return rgb


def image_size(data: bytes, source: str | Path | None = None) -> tuple[int, int]:
    """(H, W) of encoded image bytes, as `decode_image` would give them (orientation applied), from
    the header alone: nothing is decoded, so a huge image can be refused before it takes memory.
    Raises InputError as `decode_image` does."""
    if not data:
        raise InputError("image file is empty", source)
    with _readable(source), Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    if width == 0 or height == 0:
        raise InputError(f"image has zero size {(height, width)}", source)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file into an (H, W, 3) uint8 RGB array (see `decode_image`)."""
    return decode_image(read_input(path, "image"), path)
