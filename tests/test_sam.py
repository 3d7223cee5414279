"""SSA + SAM: the automatic mask generator's pieces, SAM's masks from the Triton path equal to the
reference's (PyTorch, 64 points a time) on the example photos (tiny profile), and a plain folder
of photos annotated end to end through the embedded tritonserver, resumed after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssa.params import SamParams
from ssa.sam import (
    box_nms,
    compare_masks,
    crop_boxes,
    mask_boxes,
    point_grid,
    remove_small_regions,
    stability_scores,
)

# small grids keep the tests at seconds per image; the algorithm is the same at 32 per side
FAST = {"points_per_side": 8}


def test_point_grid_is_segment_anythings():
    grid = point_grid(4)
    assert grid.shape == (16, 2)
    assert np.allclose(grid[:4], [[0.125, 0.125], [0.375, 0.125], [0.625, 0.125], [0.875, 0.125]])  # x fastest
    assert np.allclose(grid[-1], [0.875, 0.875])


def test_crop_boxes_tile_with_overlap():
    boxes, layers = crop_boxes((1500, 2250), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 2250, 1500] and layers == [0, 1, 1, 1, 1]
    overlap = int(512 / 1500 * 1500 * (2 / 2))
    crop_w, crop_h = -(-(overlap + 2250) // 2), -(-(overlap + 1500) // 2)
    assert boxes[1:] == [[0, 0, crop_w, crop_h], [0, crop_h - overlap, crop_w, 1500],
                         [crop_w - overlap, 0, 2250, crop_h], [crop_w - overlap, crop_h - overlap, 2250, 1500]]


def test_mask_boxes_stability_and_nms():
    masks = torch.zeros((3, 10, 12), dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 0, 0] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 8, 4], [0, 0, 0, 0], [0, 0, 0, 0]]
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])
    assert stability_scores(logits, 0.0, 1.0).tolist() == [1 / 3]
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    assert box_nms(boxes, torch.tensor([0.5, 0.9, 0.1, 0.9]), 0.7).tolist() == [1, 2]  # ties: earlier first


def test_small_regions_are_removed_and_holes_filled():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # a hole of 4 pixels
    mask[16:18, 16:18] = True  # an island of 4 pixels
    filled, changed = remove_small_regions(mask, 10, "holes")
    assert changed and filled[5:7, 5:7].all()
    cleaned, changed = remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[16:18, 16:18].any() and cleaned[2:12, 2:12].all()


def test_sam_params_are_bounded():
    with pytest.raises(ValueError, match="points_per_side must be between 1 and 128"):
        SamParams(points_per_side=0)
    with pytest.raises(ValueError, match="unknown SAM parameter"):
        SamParams.from_dict({"points_per_sid": 8})
    assert SamParams.from_dict({"pred_iou_thresh": 0.86}).pred_iou_thresh == 0.86


# ---------------------------------------------------------------- Triton == reference
def _sam_request(url: str, image: bytes, params: dict) -> dict:
    import tritonclient.grpc as grpcclient

    from client.engine_client import SAM_MODEL, sam_inputs

    client = grpcclient.InferenceServerClient(url)
    result = client.infer(SAM_MODEL, sam_inputs(image, json.dumps(params).encode()))
    return json.loads(result.as_numpy("annotations").reshape(-1)[0])


@pytest.fixture(scope="module")
def torch_sam(tiny_profile):
    from ssa.sam_models import TorchSam

    return TorchSam.load(tiny_profile)


# Random weights make masks that spread over most of the image, so box NMS at its default keeps
# about one per image; with NMS off (threshold 1.0) every mask that clears the other filters stays,
# and those many masks are compared one by one.
NO_NMS = {**FAST, "box_nms_thresh": 1.0}
CASES = [("sa_1", FAST), ("sa_2", FAST), ("sa_3", FAST), ("sa_4", FAST), ("sa_5", FAST), ("sa_6", FAST),
         ("sa_1", NO_NMS), ("sa_4", NO_NMS), ("sa_2", {**NO_NMS, "crop_n_layers": 1, "crop_nms_thresh": 1.0}),
         ("sa_5", {**NO_NMS, "min_mask_region_area": 400})]


def test_triton_masks_equal_the_reference(server, torch_sam, example_dir, capsys):
    from ssa.images import load_image
    from ssa.sam import generate_masks

    totals = {"reference": 0, "triton": 0, "matched": 0, "near_threshold": 0}
    for stem, values in CASES:
        params = SamParams.from_dict(values)
        image = load_image(example_dir / f"{stem}.jpg")
        reference = {"image": {"height": image.shape[0], "width": image.shape[1]},
                     "annotations": generate_masks(image, torch_sam, params)}
        triton = _sam_request(server.url, (example_dir / f"{stem}.jpg").read_bytes(), values)
        assert triton["image"]["height"] == image.shape[0] and triton["image"]["width"] == image.shape[1]
        counts = compare_masks(reference, triton, params)
        assert counts["unexplained"] == [], counts["unexplained"]
        for k in totals:
            totals[k] += counts[k]
        with capsys.disabled():
            print(f"\n  SAM {stem} {values}: {counts}")
    assert totals["matched"] >= 40, totals  # the tiny models make masks at the default thresholds
    assert totals["near_threshold"] <= 0.05 * totals["reference"], totals


def test_sam_request_errors_are_the_clients(server, example_dir):
    from tritonclient.utils import InferenceServerException

    image = (example_dir / "sa_1.jpg").read_bytes()
    for params, message in (({"points_per_side": 0}, "points_per_side must be between 1 and 128"),
                            ({"nms": 0.5}, "unknown SAM parameter")):
        with pytest.raises(InferenceServerException) as error:
            _sam_request(server.url, image, params)
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and message in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        _sam_request(server.url, b"not an image", FAST)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and "unreadable image" in error.value.message()


# ---------------------------------------------------------------- a plain folder of photos
@pytest.fixture(scope="module")
def photos(example_dir, tmp_path_factory) -> Path:
    """The example photos alone, no JSON beside them, and one corrupt image."""
    folder = tmp_path_factory.mktemp("photos")
    for p in sorted(example_dir.glob("*.jpg")):
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _ssa_annotate(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssa", "annotate", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})


def test_plain_folder_end_to_end(server, photos, tmp_path):
    from ssa.images import load_image
    from ssa.sa1b import decode_annotations, read_document

    out = tmp_path / "out"
    run = _ssa_annotate(["--url", server.url, "--data", str(photos), "--out_dir", str(out), "--save_img",
                         "--sam", "points_per_side=8"], tmp_path / "run.log")
    assert run.wait(600) == 1, (tmp_path / "run.log").read_text()  # 1: a file failed, the rest done
    failures = json.loads((out / "failures.json").read_text())
    root, out = out, out / photos.name  # outputs mirror the input: <out_dir>/<input folder's name>/
    assert [Path(f["file"]).name for f in failures] == ["broken.jpg"] and "unreadable image" in failures[0]["reason"]
    stems = sorted(p.stem for p in photos.glob("sa_*.jpg"))
    labelled = 0
    for stem in stems:
        doc = read_document(out / f"{stem}.json")  # SAM's masks, SA-1B form
        image = load_image(photos / f"{stem}.jpg")
        assert doc["image"]["file_name"] == f"{stem}.jpg" and doc["image"]["image_id"] == int(stem.split("_")[1])
        masks = decode_annotations(doc, image.shape[:2], out / f"{stem}.json")
        for ann, mask in zip(doc["annotations"], masks.masks()):
            assert set(ann) >= {"segmentation", "bbox", "area", "predicted_iou", "stability_score", "point_coords",
                                "crop_box", "id"}
            assert ann["area"] == int(mask.sum()) and ann["predicted_iou"] > 0.88 and ann["stability_score"] >= 0.95
        semantic = json.loads((out / f"{stem}_semantic.json").read_text())
        assert len(semantic["annotations"]) == len(doc["annotations"])
        assert all(a["class_name"] and a["class_proposals"] for a in semantic["annotations"])
        assert (out / f"{stem}_semantic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        labelled += len(semantic["annotations"])
    assert labelled > 0
    # the COCO export takes these outputs unchanged
    from ssa.coco import export_coco

    result = export_coco(root, tmp_path / "coco.json")
    assert result.images == len(stems) and result.annotations == labelled and not result.failures


def test_plain_folder_resumes_after_a_kill(server, photos, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        for p in sorted(photos.glob("sa_*.jpg")):
            os.link(p, data / f"c{k}_{p.name}")
    args = ["--url", server.url, "--data", str(data), "--out_dir", str(tmp_path / "out"), "--sam", "points_per_side=8"]
    out = tmp_path / "out" / "data"
    first = _ssa_annotate(args, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("*_semantic.json"))) < 2:
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    done = {p.name for p in out.glob("*_semantic.json")}
    assert 2 <= len(done) < 18
    again = _ssa_annotate(args, tmp_path / "again.log")
    assert again.wait(600) == 0, (tmp_path / "again.log").read_text()
    assert f"skipped {len(done)}" in (tmp_path / "again.log").read_text()
    names = sorted(p.name for p in out.glob("*_semantic.json"))
    assert len(names) == 18 and not list((tmp_path / "out").rglob(".*.part"))
    # copies of one photo have the same masks and labels, resumed or not
    for k in (1, 2):
        for p in sorted(photos.glob("sa_*.jpg")):
            first_doc = json.loads((out / f"c0_{p.stem}_semantic.json").read_text())
            other = json.loads((out / f"c{k}_{p.stem}_semantic.json").read_text())
            assert [a["segmentation"] for a in other["annotations"]] == [a["segmentation"] for a in first_doc["annotations"]]
            assert [a["class_name"] for a in other["annotations"]] == [a["class_name"] for a in first_doc["annotations"]]


def test_deeper_crop_layers_keep_at_least_one_point(torch_sam, example_dir):
    """points_per_side 1 shrunk by a factor 8 per layer is still one point (not a zero-point grid
    that divides by zero)."""
    from ssa.images import load_image
    from ssa.sam import generate_masks

    image = load_image(example_dir / "sa_1.jpg")
    params = SamParams(points_per_side=1, crop_n_layers=1, crop_n_points_downscale_factor=8)
    for ann in generate_masks(image, torch_sam, params):
        assert ann["crop_box"][2] > 0 and ann["area"] > 0


SAM_PEAK = """
import resource, sys
import numpy as np, skimage.data
from PIL import Image
from ssa.params import SamParams
from ssa.sam import generate_masks
from ssa.torch_models import torch_sam
models = torch_sam(sys.argv[1])
image = np.asarray(Image.fromarray(skimage.data.coffee()).resize((4000, 3000)))
params = SamParams(points_per_side=int(sys.argv[2]), pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
masks = generate_masks(image, models, params)
print(len(masks), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_sam_memory_does_not_grow_with_its_masks_on_a_large_photo(tiny_profile):
    """12 megapixels, every mask kept: 48 then 192 candidate masks of 48 MB of full-size logits
    each. Logits are upscaled a slice at a time and kept masks held as box + RLE, so the peak
    hardly moves (before: every batch's logits and every kept mask at full size, 2.2 GB at 48)."""
    peaks = {}
    for side in (4, 8):
        out = subprocess.run([sys.executable, "-c", SAM_PEAK, str(tiny_profile), str(side)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parents[1]).stdout.split()
        peaks[side] = (int(out[-2]), int(out[-1]))
    (kept_few, few), (kept_many, many) = peaks[4], peaks[8]
    assert kept_many > 2 * kept_few  # four times the points: many more masks kept
    assert many <= 1.25 * few, peaks
