"""Shared fixtures: the tiny profile and a small example set, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MASKS_PER_IMAGE = 10  # keeps the reference pipeline at seconds per image in tests


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory) -> Path:
    from ssa.profiles import build_profile

    return build_profile("tiny", tmp_path_factory.mktemp("models") / "tiny", log=lambda m: None)


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    from ssa.examples import build_examples

    out = tmp_path_factory.mktemp("examples")
    build_examples(out, max_masks=MASKS_PER_IMAGE)
    return out


@pytest.fixture(scope="session")
def nlp():
    from ssa.nouns import load_spacy

    return load_spacy()


@pytest.fixture(scope="session")
def tiny_export(tiny_profile, tmp_path_factory) -> Path:
    """The tiny profile exported to ONNX (every file checked against PyTorch by the export)."""
    from export.core import export_profile

    out = tmp_path_factory.mktemp("onnx")
    export_profile(tiny_profile, out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def reference_labels(tiny_profile, example_dir) -> dict:
    """stem -> the reference pipeline's labels for every mask of the example set (tiny profile)."""
    from ssa.dataset import folder_items
    from ssa.reference import TorchModels, annotate_image
    from ssa.runner import load_item

    models = TorchModels.load(tiny_profile)
    out = {}
    for item in folder_items(example_dir):
        image, _, masks = load_item(item)
        out[item.stem] = annotate_image(image, masks, models)
    return out


@pytest.fixture(scope="session")
def repositories(tiny_profile, tiny_export, tmp_path_factory) -> dict:
    """The tiny profile's generated model repositories: cpu (OpenVINO fp32, labels identical to the
    reference's), cpu_bf16 (OpenVINO bf16 on this CPU's matrix units, the text encoders and CLIPSeg's decoder fp32) and gpu."""
    from model_repository.generate import generate_repository

    root = tmp_path_factory.mktemp("repository")
    return {"cpu": generate_repository(tiny_export, tiny_profile, root / "cpu", "cpu", precision="fp32"),
            "cpu_bf16": generate_repository(tiny_export, tiny_profile, root / "cpu_bf16", "cpu", precision="bf16"),
            "gpu": generate_repository(tiny_export, tiny_profile, root / "gpu", "gpu")}


@pytest.fixture(scope="session")
def server(repositories, tmp_path_factory):
    """One real embedded tritonserver on the tiny cpu repository, shared by the tests that only
    send it requests (tests that kill a server start their own)."""
    from model_repository.server import EmbeddedServer

    with EmbeddedServer(repositories["cpu"], log_path=tmp_path_factory.mktemp("log") / "triton.log") as s:
        yield s


# The preprocessor_config.json each light-mode checkpoint publishes on the hub (the layout before
# transformers 5's combined processor_config.json), with their old-style fields: CLIP's integer
# `size` / `crop_size` and `feature_extractor_type`, CLIPSeg's integer `size` and ViT feature
# extractor, OneFormer's class-info file in the dataset repository and its sequence lengths.
# Reconstructed from the published files' fields as transformers' processors read them (their
# `__init__` arguments and the conversion scripts' settings: OneFormer's pixel mean / std are its
# detectron2 config's 123.675 ... / 58.395 ... divided by 255).
_ONEFORMER_PUBLISHED = {
    "do_normalize": True, "do_reduce_labels": False, "do_resize": True, "ignore_index": 255,
    "image_mean": [0.48500001430511475, 0.4560000002384186, 0.4059999883174896],
    "image_std": [0.2290000021457672, 0.2239999920129776, 0.22499999403953552],
    "image_processor_type": "OneFormerImageProcessor", "max_seq_length": 77, "num_text": 134,
    "processor_class": "OneFormerProcessor", "repo_path": "shi-labs/oneformer_demo", "resample": 2, "task_seq_length": 77}
HUB_PREPROCESSOR = {
    "oneformer_coco": {**_ONEFORMER_PUBLISHED, "class_info_file": "coco_panoptic.json", "num_labels": 133,
                       "size": {"longest_edge": 1333, "shortest_edge": 800}},
    "oneformer_ade20k": {**_ONEFORMER_PUBLISHED, "class_info_file": "ade20k_panoptic.json", "num_labels": 150,
                         "size": {"longest_edge": 2048, "shortest_edge": 512}},
    "blip": {
        "do_normalize": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "BlipImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "BlipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098, "size": 384},
    "clip": {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
    "clipseg": {
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "processor_class": "CLIPSegProcessor",
        "resample": 2, "size": 352},
    "sam": {
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "SamImageProcessor",
        "image_std": [0.229, 0.224, 0.225], "pad_size": {"height": 1024, "width": 1024},
        "processor_class": "SamProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 1024}},
}
CLASS_INFO = {"coco_panoptic.json": "coco", "ade20k_panoptic.json": "ade20k"}
COCO_THINGS = 80  # COCO panoptic: the first 80 of its 133 classes are things
ADE20K_THINGS = {  # ADE20K panoptic's thing classes (ids of the 150), as in OneFormer's ade20k_panoptic.json
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45, 47, 49,
    50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89,
    90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126,
    127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149}


def write_class_info(snapshot: Path, name: str) -> Path:
    """OneFormer's class-info file as `ssa models --download` stores it: {"<id>": {"name", "isthing"}}."""
    import json

    from ssa.labels import raw_class_names

    dataset = CLASS_INFO[name]
    names = raw_class_names(dataset)
    things = set(range(COCO_THINGS)) if dataset == "coco" else ADE20K_THINGS
    folder = snapshot / "datasets" / "shi-labs" / "oneformer_demo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({str(i): {"name": n, "isthing": int(i in things)} for i, n in enumerate(names)}))
    return folder / name


def hub_snapshot(tiny_profile: Path, root: Path, roles=None, class_info: bool = True) -> Path:
    """A snapshot folder laid out as `ssa models --download` writes it (`<root>/<hub id>/` per
    light-mode checkpoint, `<root>/datasets/shi-labs/oneformer_demo/` for OneFormer's class-info
    files), with the tiny profile's small random weights and tokenizers and the configuration files
    the real checkpoints publish: `preprocessor_config.json` (HUB_PREPROCESSOR) instead of the
    combined processor_config.json, `config.json` with BLIP's text `eos_token_id` 2 beside its
    `sep_token_id` (the real config's; generation stops at sep), and BLIP's generation_config.json
    as transformers writes it from such a config."""
    import json
    import shutil

    from ssa.profiles import ALL_ROLES, HUB_IDS

    for role in roles or ALL_ROLES:
        folder = root / HUB_IDS["light"][role]
        shutil.copytree(tiny_profile / role, folder)
        (folder / "processor_config.json").unlink()
        (folder / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR[role], indent=2))
        config = json.loads((folder / "config.json").read_text())
        config["transformers_version"] = "4.26.0.dev0"
        if role == "blip":
            text = config["text_config"]
            text["eos_token_id"] = 2
            (folder / "generation_config.json").write_text(json.dumps(
                {"_from_model_config": True, "bos_token_id": text["bos_token_id"], "eos_token_id": 2,
                 "pad_token_id": text["pad_token_id"], "sep_token_id": text["sep_token_id"],
                 "transformers_version": "4.26.0.dev0"}, indent=2))
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        if class_info and role in HUB_PREPROCESSOR and "class_info_file" in HUB_PREPROCESSOR[role]:
            write_class_info(root, HUB_PREPROCESSOR[role]["class_info_file"])
    return root


@pytest.fixture(scope="session")
def light_profile(tiny_profile, tmp_path_factory) -> Path:
    """The light profile built offline (HF_HUB_OFFLINE=1) from a hub-layout snapshot folder of every
    checkpoint (`hub_snapshot`), then the snapshot folder deleted: the profile stands on its own."""
    import shutil

    from ssa.profiles import build_profile

    snapshot = hub_snapshot(tiny_profile, tmp_path_factory.mktemp("snapshot"))
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # as on a GPU node without internet, whatever the caller's setting
    try:
        out = build_profile("light", tmp_path_factory.mktemp("models") / "light", snapshot_dir=snapshot,
                            log=lambda m: None)
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved
    shutil.rmtree(snapshot)
    return out
