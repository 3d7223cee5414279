"""Model profiles build offline; bench models have the real light-mode sizes."""

from __future__ import annotations

import json
import shutil

import pytest

from ssa.profiles import ALL_ROLES, HUB_IDS, build_random_role
from ssa.tokenizers_offline import build_blip_tokenizer, build_clip_tokenizer
from tests.conftest import HUB_PREPROCESSOR, hub_snapshot, write_class_info


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


def test_real_checkpoint_builds_offline_with_its_class_info_file(tiny_profile, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1), a OneFormer checkpoint whose processor names a class-info file:
    without the file in the snapshot folder the build stops and names the path and --download;
    with it (where --download puts it) the profile builds, the processor reads the file there, and
    the pixel plan follows the image processor AutoProcessor picked (no torchvision here)."""
    from ssa.labels import raw_class_names
    from ssa.pixels import ImagePlan
    from ssa.profiles import build_profile

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "snapshots"
    hub_snapshot(tiny_profile, snapshot, roles=("oneformer_coco",), class_info=False)
    with pytest.raises(FileNotFoundError, match="coco_panoptic.json.*--download"):
        build_profile("light", tmp_path / "light", snapshot_dir=snapshot, roles=("oneformer_coco",), log=lambda m: None)
    names = raw_class_names("coco")
    write_class_info(snapshot, "coco_panoptic.json")
    out = build_profile("light", tmp_path / "light", snapshot_dir=snapshot, roles=("oneformer_coco",),
                        log=lambda m: None)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out / "oneformer_coco")
    image_processor = processor.image_processor
    assert image_processor.metadata["class_names"] == list(names) and image_processor.metadata["thing_ids"] == list(range(80))
    picked = type(image_processor).__name__
    assert picked.startswith("OneFormerImageProcessor"), picked
    published = HUB_PREPROCESSOR["oneformer_coco"]
    plan = ImagePlan.from_processor(image_processor)  # the device plan follows the class picked
    assert (plan.resize, plan.resample, plan.mean, plan.std) == (
        published["size"], published["resample"], tuple(published["image_mean"]), tuple(published["image_std"]))
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


# the image processor AutoProcessor picks for each published checkpoint's configuration with no
# torchvision installed (transformers 5 prefers the torchvision-backed classes where it can import them)
PICKED = {"oneformer_coco": "OneFormerImageProcessorPil", "oneformer_ade20k": "OneFormerImageProcessorPil",
          "blip": "BlipImageProcessorPil", "clip": "CLIPImageProcessorPil", "clipseg": "ViTImageProcessorPil",
          "sam": "SamImageProcessorPil"}


def test_light_profile_from_published_configs_loads_as_they_are_read(light_profile):
    """The light profile built offline from the published configuration files: each role's
    processor is the class AutoProcessor picks for them, with the published sizing (CLIP's integer
    size and crop as shortest edge and square crop, CLIPSeg's and BLIP's as squares), OneFormer's
    class names from its class-info file, and BLIP's caption ending at sep (not the config's eos)."""
    from ssa.graph_models import model_metadata
    from ssa.labels import raw_class_names
    from ssa.preprocess import Processors
    from ssa.profiles import load_processor, load_role_model

    picked = {role: type(load_processor(light_profile / role).image_processor).__name__ for role in ALL_ROLES}
    assert picked == PICKED
    processors = Processors.load(light_profile)
    plans = processors.plans
    assert plans["clip"].resize == {"shortest_edge": 224} and plans["clip"].crop == (224, 224)
    assert plans["blip"].resize == {"height": 384, "width": 384} and plans["blip"].resample == 3
    assert plans["oneformer_coco"].resize == {"longest_edge": 1333, "shortest_edge": 800}
    assert plans["oneformer_ade20k"].resize == {"longest_edge": 2048, "shortest_edge": 512}
    assert load_processor(light_profile / "clipseg").image_processor.size == {"height": 352, "width": 352}
    for ds in ("coco", "ade20k"):
        assert processors.oneformer[ds].image_processor.metadata["class_names"] == list(raw_class_names(ds))
    blip = json.loads((light_profile / "blip" / "config.json").read_text())["text_config"]
    assert (blip["eos_token_id"], blip["sep_token_id"]) == (2, 102)
    assert model_metadata({"blip": load_role_model(light_profile / "blip", "blip")})["blip"]["eos_token_id"] == 102
