from __future__ import annotations

import numpy as np
import pytest

from ssa.errors import InputError
from ssa.masks import decode_rle, encode_rle, mask_bbox, parse_counts


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (300, 451)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == list(shape)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle, shape), mask)


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a bool mask, starting with a run of zeros (COCO's order)."""
    flat = np.concatenate(([False], mask.ravel(order="F"), [not mask.ravel(order="F")[-1]]))
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    return np.diff(np.concatenate(([0], edges))).tolist()


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, 451), (1500, 2250)])
@pytest.mark.parametrize("density", [0.0005, 0.5, 0.9995])
def test_counts_parse_as_pycocotools_wrote_them(shape, density):
    """The compressed counts parser gives the mask's runs, for short and long runs (up to the
    3.4 million of a 1500 x 2250 mask with a few pixels set) and negative differences."""
    rng = np.random.default_rng(shape[0])
    mask = rng.random(shape) < density
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    counts = encode_rle(mask)["counts"].encode()
    assert parse_counts(counts, mask.size).tolist() == _runs(mask)


def test_no_string_of_the_alphabet_harms_the_process(tmp_path):
    """Strings of COCO's alphabet that are not valid counts, fed to the decoder in a child
    process: each is refused, and the process exits cleanly (before the parser, pycocotools wrote
    past its buffers on some of them: the heap aborted at exit)."""
    import subprocess
    import sys

    script = tmp_path / "fuzz.py"
    script.write_text("""
import random
from ssa.errors import InputError
from ssa.masks import decode_rle
random.seed(7)
accepted = 0
for _ in range(20000):
    text = "".join(chr(random.randint(48, 111)) for _ in range(random.randint(1, 40)))
    size = random.choice([(40, 50), (1, 1), (3, 7), (100, 1)])
    try:
        decode_rle({"size": list(size), "counts": text}, size)
        accepted += 1
    except InputError:
        pass
print("accepted", accepted)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("accepted ")


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
        ({"size": [8, 8], "counts": "!!!garbage~~~"}, "outside COCO's '0'-'o' alphabet: '!'"),
        ({"size": [8, 8], "counts": "04zzzz"}, "outside COCO's '0'-'o' alphabet: 'z'"),
        ({"size": [8, 8], "counts": "0\u00e94"}, "outside COCO's '0'-'o' alphabet: '\u00e9'"),
        # a byte over 127 made pycocotools write past the mask (a heap abort later): refused first
        ({"size": [8, 8], "counts": b"\xff\xfe"}, "byte outside COCO's '0'-'o' alphabet"),
        ({"size": [8, 8], "counts": "OOOOOOOOOO"}, "corrupt"),
        ({"size": [8, 8], "counts": "ooooooo1"}, "corrupt"),
        ({"size": [8, 8], "counts": "04P"}, "ends inside a number"),
        ({"size": [8, 8], "counts": ""}, "empty"),
        ({"size": [8, 8], "counts": "PPPPPPPP1"}, "a number of 9 characters"),
        ({"size": [8, 8], "counts": "R1"}, "runs of 34 pixels, not height \\* width = 64"),
        ({"size": [8, 8], "counts": "l1:J"}, "some negative"),  # runs 60, 10, -6
        ({"size": [8, 8], "counts": "PR0"}, "not the encoding pycocotools writes"),  # 64 in 3 characters, not 2
        ({"size": [8, 8], "counts": "n00R1"}, "do not describe a mask"),  # runs 30, 0, 34: the mask of one run
        ({"size": [8, 8], "counts": [1, 2, 3]}, "do not add up"),
        ({"size": [8, 8], "counts": [True] * 64}, "hold True: runs are non-negative integers"),  # JSON's true
        ({"size": [8, 8], "counts": [32.0, 32]}, "hold 32.0: runs are non-negative integers"),
        ({"size": [8, 8], "counts": [70, -6]}, "hold -6: runs are non-negative integers"),
        ({"size": [8, 8], "counts": 12}, "expected a string"),
    ],
)
def test_invalid_rle(segmentation, message):
    with pytest.raises(InputError, match=message):
        decode_rle(segmentation, (8, 8))
