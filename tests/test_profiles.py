"""Model profiles build offline; bench models have the real light-mode sizes."""

from __future__ import annotations

import json
import shutil

import pytest

from ssa.profiles import ALL_ROLES, HUB_IDS, build_random_role
from ssa.tokenizers_offline import build_blip_tokenizer, build_clip_tokenizer


def test_clip_tokenizer_is_the_real_one():
    tok = build_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    # OneFormer's task text
    assert tok("the task is semantic")["input_ids"] == [49406, 518, 10549, 533, 29119, 1550, 49407]


def test_blip_tokenizer_has_blips_special_ids():
    tok = build_blip_tokenizer(30524)
    assert (len(tok), tok.pad_token_id, tok.sep_token_id, tok.bos_token_id) == (30524, 0, 102, 30522)


def test_tiny_profile_directory(tiny_profile):
    manifest = json.loads((tiny_profile / "profile.json").read_text())
    assert manifest["profile"] == "tiny" and set(manifest["model_ids"]) == set(ALL_ROLES)
    for role in ALL_ROLES:
        assert (tiny_profile / role / "config.json").is_file()
        assert any((tiny_profile / role).glob("*.safetensors"))


# real parameter counts (millions) of the checkpoints the bench profile mimics: light mode's, and
# SAM ViT-H (facebook/sam-vit-huge: 641M), the published engine's mask generator
BENCH_PARAMS = {"oneformer_coco": (200, 240), "oneformer_ade20k": (45, 60), "blip": (220, 260),
                "clip": (145, 160), "clipseg": (145, 160), "sam": (635, 645)}


def test_sam_checkpoints_are_named():
    assert HUB_IDS["light"]["sam"] == "facebook/sam-vit-base" and HUB_IDS["full"]["sam"] == "facebook/sam-vit-huge"
    assert HUB_IDS["bench"]["sam"] == "facebook/sam-vit-huge"


@pytest.mark.parametrize("role", ALL_ROLES)
def test_bench_model_builds_offline_at_real_size(role):
    model, processor = build_random_role(role, "bench", build_clip_tokenizer())
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    low, high = BENCH_PARAMS[role]
    assert low <= millions <= high, f"{role}: {millions:.1f}M parameters"
    assert processor is not None


def hub_snapshot(tiny_profile, root, role: str = "oneformer_coco"):
    """A checkpoint folder laid out as the hub's (`<root>/<hub id>/`): the tiny role's weights and
    tokenizer, and a `preprocessor_config.json` with the fields the published OneFormer checkpoints
    carry (`class_info_file` in the dataset repository `repo_path`, processor class, sizing,
    sequence lengths; reconstructed from transformers' OneFormerImageProcessor and
    OneFormerProcessor arguments) instead of the combined processor_config.json save_pretrained
    writes."""
    import shutil

    folder = root / HUB_IDS["light"][role]
    shutil.copytree(tiny_profile / role, folder)
    combined = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").unlink()
    config = {**combined["image_processor"], "class_info_file": "coco_panoptic.json",
              "repo_path": "shi-labs/oneformer_demo", "processor_class": "OneFormerProcessor",
              "max_seq_length": 77, "task_seq_length": 77}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def test_real_checkpoint_builds_offline_with_its_class_info_file(tiny_profile, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1), a OneFormer checkpoint whose processor names a class-info file:
    without the file in the snapshot folder the build stops and names the path and --download;
    with it (where --download puts it) the profile builds, the processor reads the file there, and
    the pixel plan follows the image processor AutoProcessor picked (no torchvision here)."""
    from ssa.labels import raw_class_names
    from ssa.pixels import ImagePlan
    from ssa.preprocess import Processors
    from ssa.profiles import build_profile

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "snapshots"
    hub_snapshot(tiny_profile, snapshot)
    with pytest.raises(FileNotFoundError, match="coco_panoptic.json.*--download"):
        build_profile("light", tmp_path / "light", snapshot_dir=snapshot, roles=("oneformer_coco",), log=lambda m: None)
    names = raw_class_names("coco")
    info = {str(i): {"name": n, "isthing": int(i < 80)} for i, n in enumerate(names)}
    classes = snapshot / "datasets" / "shi-labs" / "oneformer_demo"
    classes.mkdir(parents=True)
    (classes / "coco_panoptic.json").write_text(json.dumps(info))
    out = build_profile("light", tmp_path / "light", snapshot_dir=snapshot, roles=("oneformer_coco",),
                        log=lambda m: None)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out / "oneformer_coco")
    image_processor = processor.image_processor
    assert image_processor.metadata["class_names"] == list(names) and image_processor.metadata["thing_ids"] == list(range(80))
    picked = type(image_processor).__name__
    assert picked.startswith("OneFormerImageProcessor"), picked
    tiny = Processors.load(tiny_profile).plans["oneformer_coco"]
    assert ImagePlan.from_processor(image_processor) == tiny  # the device plan follows the class picked
    # the profile stands on its own: moved elsewhere, with the snapshot folder gone, it still loads
    # its class names (from the copy next to the processor, not the hub: offline here)
    moved = tmp_path / "elsewhere" / "oneformer_coco"
    moved.parent.mkdir()
    shutil.move(out / "oneformer_coco", moved)
    shutil.rmtree(snapshot)
    from ssa.profiles import load_processor

    assert load_processor(moved).image_processor.metadata["class_names"] == list(names)
    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="no shi-labs/oneformer_coco_swin_large"):
        build_profile("light", tmp_path / "light2", snapshot_dir=missing, roles=("oneformer_coco",), log=lambda m: None)
