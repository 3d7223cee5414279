from __future__ import annotations

import numpy as np
import pytest

from ssa.geometry import Box, crop, crop_box


@pytest.mark.parametrize(
    ("bbox", "scale", "size", "expected"),
    [
        # scale 1: the box itself, x2 = x + w inclusive
        ([10, 20, 30, 40], 1.0, (100, 100), Box(10, 20, 40, 60)),
        # bw = 31, bh = 41; dw = 31 * 0.2 / 2 = 3.1, dh = 4.1 -> 6.9, 15.9, 43.1, 64.1 -> truncated
        ([10, 20, 30, 40], 1.2, (100, 100), Box(6, 15, 43, 64)),
        # scale 1.6: dw = 31 * 0.3 = 9.3, dh = 41 * 0.3 = 12.3 -> 0.7, 7.7, 49.3, 72.3
        ([10, 20, 30, 40], 1.6, (100, 100), Box(0, 7, 49, 72)),
        # at the top-left border: negative values clip to 0 (x1 = -0.3 truncates to 0)
        ([0, 0, 10, 10], 1.6, (50, 50), Box(0, 0, 13, 13)),
        # at the bottom-right border: clipped to W - 1, H - 1
        ([90, 40, 10, 10], 1.6, (50, 100), Box(86, 36, 99, 49)),
        # a one-pixel box: x2 = x + 1, bw = 2, dw = 0.6 -> 4.4, 6.6 -> 4..6
        ([5, 5, 1, 1], 1.6, (20, 20), Box(4, 4, 6, 6)),
        # a one-pixel box in the last pixel of the image stays inside
        ([19, 19, 1, 1], 1.6, (20, 20), Box(18, 18, 19, 19)),
        # a one-pixel image
        ([0, 0, 1, 1], 1.2, (1, 1), Box(0, 0, 0, 0)),
        # float bboxes as SA-1B writes them
        ([12.5, 7.25, 3.5, 2.0], 1.2, (30, 30), Box(12, 6, 16, 9)),
    ],
)
def test_crop_box(bbox, scale, size, expected):
    assert crop_box(bbox, scale, size) == expected


def test_crop_is_inclusive_and_handles_one_pixel():
    image = np.arange(5 * 6 * 3).reshape(5, 6, 3)
    box = Box(1, 2, 3, 4)
    out = crop(image, box)
    assert out.shape == (3, 3, 3) == (box.height, box.width, 3)
    assert np.array_equal(out, image[2:5, 1:4])
    assert crop(image, Box(5, 4, 5, 4)).shape == (1, 1, 3)
