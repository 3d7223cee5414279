from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ssa.errors import InputError
from ssa.masks import encode_rle
from ssa.sa1b import decode_annotations, parse_document, read_document, write_json_atomic


def document(mask: np.ndarray, bbox=None, **image) -> dict:
    h, w = mask.shape
    return {"image": {"image_id": 1, "width": w, "height": h, "file_name": "x.jpg", **image},
            "annotations": [{"id": 7, "bbox": bbox or [1.0, 1.0, 2.0, 2.0], "area": int(mask.sum()),
                             "segmentation": encode_rle(mask), "predicted_iou": 0.9}]}


def square(h=6, w=8) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[1:3, 1:3] = True
    return m


def test_valid_document_decodes():
    masks = decode_annotations(document(square()), (6, 8))
    assert masks.masks().shape == (1, 6, 8) and masks.mask(0).sum() == 4 and masks.region(0).shape == (2, 2)
    assert masks.bboxes.tolist() == [[1.0, 1.0, 2.0, 2.0]]


def test_zero_width_box_of_a_one_pixel_wide_mask_is_sams_convention():
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2] = True  # one column: SAM's box is [2, 1, 0, 2] (last minus first)
    masks = decode_annotations(document(mask, bbox=[2, 1, 0, 2]), (6, 8), "sa_9.json")
    assert masks.bboxes.tolist() == [[2.0, 1.0, 0.0, 2.0]]


@pytest.mark.parametrize(
    ("doc", "size", "message"),
    [
        (document(square(), bbox=[1, 1, 0, 2]), (6, 8), "id=7: bbox .* zero or negative size"),
        (document(square(), bbox=[6, 1, 4, 2]), (6, 8), "id=7: bbox .* outside the image"),
        (document(square(), bbox=[-3, 1, 2, 2]), (6, 8), "outside the image"),
        (document(square(), bbox=[1, 1, "a", 2]), (6, 8), "non-numeric"),
        (document(square(), bbox=[1, 1, 2]), (6, 8), r"not \[x, y, w, h\]"),
        (document(np.zeros((6, 8), bool)), (6, 8), "id=7: empty mask"),
        (document(square(5, 8)), (5, 8), "says the image is 8x5"),  # checked against a 6x8 image below
    ],
)
def test_invalid_annotations_name_file_and_annotation(doc, size, message):
    if size == (5, 8):
        doc["image"].update(width=8, height=5)
        size = (6, 8)
        doc["annotations"][0]["segmentation"] = encode_rle(square(6, 8))
    with pytest.raises(InputError, match=message) as info:
        decode_annotations(doc, size, "sa_9.json")
    assert str(info.value).startswith("sa_9.json: ")


def test_a_size_turned_a_quarter_says_so():
    """A document of the image as stored (160x96) for an image its EXIF orientation shows as 96x160."""
    with pytest.raises(InputError, match=r"says the image is 8x6 \(WxH\) but the image is 6x8 \(width and height "
                       r"swapped: if its EXIF orientation turns it"):
        decode_annotations(document(square(6, 8)), (8, 6), "sa_9.json")
    with pytest.raises(InputError) as info:  # any other size: no such hint
        decode_annotations(document(square(6, 8)), (7, 8), "sa_9.json")
    assert "swapped" not in str(info.value)


def test_rle_of_another_size_is_rejected():
    doc = document(square(6, 8))
    doc["image"].pop("width")  # no image block size: the RLE check alone catches it
    with pytest.raises(InputError, match=r"sa_9.json: annotation id=7: RLE size \[6, 8\] differs"):
        decode_annotations(doc, (7, 8), "sa_9.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ("", "annotation file is empty"),
        (" \n", "annotation file is empty"),
        ("[1, 2]", "not a JSON object"),
        ('{"image": {}}', "no 'annotations' list"),
        ('{"annotations": [3]}', "annotation #0 is not an object"),
        ('{"annotations": [{"id": 4, "bbox": [0, 0, 1, 1]}]}', "annotation id=4 has no 'segmentation'"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        ('{"annotations": ' + "[" * 100_000 + "]" * 100_000 + "}", r"invalid JSON \(nested too deeply"),
        ('{"annotations": [], "image": {"id": ' + "9" * 5000 + "}}", r"invalid JSON \(Exceeds the limit"),
        ('{"annotations": [], "image": {"width": "8", "height": 6}}', "image width '8' is not a positive integer"),
        ('{"annotations": [], "image": {"width": 8, "height": 0}}', "image height 0 is not a positive integer"),
        ('{"annotations": [], "image": {"width": true, "height": 6}}', "image width True is not a positive integer"),
        ('{"annotations": [], "score": NaN}', r"invalid JSON \(NaN is not a JSON value\)"),
        ('{"annotations": [{"bbox": [0, 0, -Infinity, 1]}]}', r"invalid JSON \(-Infinity is not a JSON value\)"),
    ],
)
def test_invalid_json_names_the_file(tmp_path, text, message):
    path = tmp_path / "sa_3.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=message) as info:
        read_document(path)
    assert str(path) in str(info.value)


def test_unknown_fields_are_kept():
    doc = document(square())
    doc["annotations"][0]["crop_box"] = [0, 0, 8, 6]
    doc["extra"] = {"anything": 1}
    assert parse_document(json.dumps(doc)) == doc


def test_outputs_never_hold_what_json_has_no_token_for(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"score": float("nan")})
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})  # not serialisable: nothing replaces the old file
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode
