from __future__ import annotations

import numpy as np
import pytest

from ssa.errors import InputError
from ssa.masks import decode_rle, encode_rle, mask_bbox


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (300, 451)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == list(shape)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle, shape), mask)


def test_uncompressed_rle_is_accepted():
    mask = np.zeros((4, 3), bool)
    mask[1:3, 1] = True  # column-major runs: 5 zeros, 2 ones, 5 zeros
    assert np.array_equal(decode_rle({"size": [4, 3], "counts": [5, 2, 5]}, (4, 3)), mask)


def test_mask_bbox_is_xywh():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:9] = True
    assert mask_bbox(mask) == [3.0, 2.0, 6.0, 3.0]


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [10, 10], "counts": "P;1"}, "differs from the image size"),
        ({"counts": "abc"}, "not a COCO RLE"),
        ("not a dict", "not a COCO RLE"),
        ({"size": [0, 5], "counts": "a"}, "positive integers"),
        ({"size": [8, 8], "counts": "!!!garbage~~~"}, "corrupt"),
        ({"size": [8, 8], "counts": "zzzz"}, "corrupt"),
        ({"size": [8, 8], "counts": [1, 2, 3]}, "do not add up"),
        ({"size": [8, 8], "counts": 12}, "expected a string"),
    ],
)
def test_invalid_rle(segmentation, message):
    with pytest.raises(InputError, match=message):
        decode_rle(segmentation, (8, 8))
