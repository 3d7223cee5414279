"""The reference pipeline on the tiny profile over the example set, and the `ssa reference` CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ssa.cli import main
from ssa.masks import decode_rle
from ssa.sa1b import read_document

SA1B_FIELDS = {"id", "bbox", "area", "segmentation", "predicted_iou", "point_coords", "stability_score", "crop_box"}


def run_reference(tiny_profile, data_dir, out_dir, *extra) -> int:
    return main(["reference", "--data_dir", str(data_dir), "--out_dir", str(out_dir), "--profile", "tiny",
                 "--models_dir", str(tiny_profile.parent), *extra])


@pytest.fixture(scope="module")
def reference_outputs(tiny_profile, example_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run_reference(tiny_profile, example_dir, out, "--save_img") == 0
    return out / example_dir.name  # the runner's layout: <out_dir>/<input folder's name>/


def test_every_image_gets_a_valid_sa1b_document(example_dir, reference_outputs):
    images = sorted(example_dir.glob("*.jpg"))
    assert len(images) == 6
    for image in images:
        source = read_document(image.with_suffix(".json"))
        out = json.loads((reference_outputs / f"{image.stem}_semantic.json").read_text())
        assert out["image"] == source["image"]
        assert len(out["annotations"]) == len(source["annotations"]) > 0
        for ann, src in zip(out["annotations"], source["annotations"]):
            assert {k: ann[k] for k in src} == src  # every input field kept as it was
            assert SA1B_FIELDS <= set(ann)
            assert isinstance(ann["class_name"], str) and ann["class_name"]
            assert 1 <= len(ann["class_proposals"]) <= 3
            assert ann["class_name"] in ann["class_proposals"]
            assert len(set(ann["class_proposals"])) == len(ann["class_proposals"])
            scores = ann["class_proposal_scores"]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
            assert 0 <= ann["class_name_vote"] <= 1
            size = (out["image"]["height"], out["image"]["width"])
            assert decode_rle(ann["segmentation"], size).any()
        assert out["ssa"]["profile"] == "tiny" and out["ssa"]["params"]["top_k"] == 3
        assert out["ssa"]["model_ids"]["clip"] == "openai/clip-vit-base-patch32"
        png = reference_outputs / f"{image.stem}_semantic.png"
        assert png.stat().st_size > 1000


def test_labels_vary_across_masks(reference_outputs):
    names = {a["class_name"] for p in reference_outputs.glob("*_semantic.json")
             for a in json.loads(p.read_text())["annotations"]}
    captions = {a["caption"] for p in reference_outputs.glob("*_semantic.json")
                for a in json.loads(p.read_text())["annotations"]}
    assert len(names) > 3 and len(captions) > 10


def test_second_run_is_identical(tiny_profile, example_dir, reference_outputs, tmp_path):
    assert run_reference(tiny_profile, example_dir, tmp_path) == 0
    firsts = sorted(reference_outputs.glob("*_semantic.json"))
    assert len(firsts) == 6
    for first in firsts:
        assert (tmp_path / example_dir.name / first.name).read_bytes() == first.read_bytes(), first.name


def test_rerun_skips_done_images(tiny_profile, example_dir, reference_outputs, capsys):
    assert run_reference(tiny_profile, example_dir, reference_outputs.parent) == 0
    assert "done 0, skipped 6, failed 0" in capsys.readouterr().out


def test_bad_files_are_reported_and_the_rest_done(tiny_profile, example_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sa_2.jpg", "sa_2.json", "sa_6.jpg", "sa_6.json", "sa_1.jpg", "sa_3.jpg", "sa_3.json"):
        shutil.copy(example_dir / name, data / name)
    (data / "sa_3.json").write_text("{broken")  # invalid JSON
    (data / "sa_6.jpg").write_bytes(b"garbage")  # corrupt image
    # sa_1.jpg has no JSON
    out = tmp_path / "out"
    assert run_reference(tiny_profile, data, out) == 1
    failures = json.loads((out / "failures.json").read_text())
    reasons = {f["file"].split("/")[-1]: f["reason"] for f in failures}
    assert set(reasons) == {"sa_1.jpg", "sa_3.json", "sa_6.jpg"}
    assert "invalid JSON" in reasons["sa_3.json"]
    assert "unreadable image" in reasons["sa_6.jpg"]
    assert "no annotation file" in reasons["sa_1.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["data", "failures.json"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["sa_2_semantic.json"]


def test_one_candidate_and_one_pixel_crop(tiny_profile, example_dir, tmp_path):
    """A mask in the image corner whose crops are tiny must not break any model or vote."""
    from ssa.masks import encode_rle

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(example_dir / "sa_2.jpg", data / "sa_2.jpg")
    doc = read_document(example_dir / "sa_2.json")
    h, w = doc["image"]["height"], doc["image"]["width"]
    corner = np.zeros((h, w), bool)
    corner[h - 1, w - 1] = True
    doc["annotations"] = [{"id": 1, "bbox": [w - 1.0, h - 1.0, 1.0, 1.0], "area": 1,
                           "segmentation": encode_rle(corner)}]
    (data / "sa_2.json").write_text(json.dumps(doc))
    assert run_reference(tiny_profile, data, tmp_path / "out") == 0
    ann = json.loads((tmp_path / "out" / "data" / "sa_2_semantic.json").read_text())["annotations"][0]
    assert ann["class_name"] in ann["class_proposals"]


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["reference", "--help"])
    out = capsys.readouterr().out
    for word in ("--data_dir", "--out_dir", "--profile", "--save_img", "tiny", "bench"):
        assert word in out
