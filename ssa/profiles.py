"""Model profiles: which five models the engine runs, and how a profile directory is made.

Every profile ends up as one directory in `save_pretrained` form, one sub-folder per role
(model + processor + tokenizer), plus `profile.json`. The reference pipeline, the exporter and
the tests load every profile from such a directory through `ssa.models.load_models`, the same
code path for random and real weights.

- tiny:  every architecture with seeded random weights and a few small layers (tests, seconds).
- bench: the light-mode architectures at their real sizes with seeded random weights (same FLOPs
         and memory as the real models; benchmarks).
- light, full: the Hugging Face checkpoints of the published engine (docs/engine.md), downloaded when the
         hub is reachable or read from a local snapshot folder (`--snapshot-dir`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssa import __version__
from ssa.labels import raw_class_names

ROLES = ("oneformer_coco", "oneformer_ade20k", "blip", "clip", "clipseg")  # the labelling models
SAM = "sam"  # the mask generator ("SSA + SAM"): built with the others, loaded only when masks are made
ALL_ROLES = (*ROLES, SAM)
PROFILES = ("tiny", "bench", "light", "full")

HUB_IDS: dict[str, dict[str, str]] = {
    "light": {
        "oneformer_coco": "shi-labs/oneformer_coco_swin_large",
        "oneformer_ade20k": "shi-labs/oneformer_ade20k_swin_tiny",
        "blip": "Salesforce/blip-image-captioning-base",
        "clip": "openai/clip-vit-base-patch32",
        "clipseg": "CIDAS/clipseg-rd16",
        # the smallest SAM: the light mode trades mask quality for speed, as its other models do
        "sam": "facebook/sam-vit-base",
    },
    "full": {
        "oneformer_coco": "shi-labs/oneformer_coco_swin_large",
        "oneformer_ade20k": "shi-labs/oneformer_ade20k_swin_large",
        "blip": "Salesforce/blip-image-captioning-large",
        "clip": "openai/clip-vit-large-patch14",
        "clipseg": "CIDAS/clipseg-rd64-refined",
        # ViT-H: the SAM the published engine ran (sam_vit_h_4b8939)
        "sam": "facebook/sam-vit-huge",
    },
}
# The random profiles stand in for light mode: their `model_id` says which checkpoint they mimic;
# bench's SAM is ViT-H at real size, the published engine's, so SAM's cost is measured as it ran.
HUB_IDS["bench"] = {**HUB_IDS["light"], "sam": HUB_IDS["full"]["sam"]}
HUB_IDS["tiny"] = HUB_IDS["light"]

DATASET_OF = {"oneformer_coco": "coco", "oneformer_ade20k": "ade20k"}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ONEFORMER_MEAN = [123.675 / 255, 116.28 / 255, 103.53 / 255]
ONEFORMER_STD = [58.395 / 255, 57.12 / 255, 57.375 / 255]
CLIP_CONTEXT = 77


@dataclass(frozen=True)
class RandomSpec:
    """How one role of a random profile is built: model config kwargs and processor settings."""

    config: Callable[[Any], Any]  # tokenizer(s) -> transformers config
    processor: dict[str, Any] = field(default_factory=dict)


def _id2label(role: str) -> dict[int, str]:
    return dict(enumerate(raw_class_names(DATASET_OF[role])))


def _oneformer_config(role: str, size: str):
    from transformers import OneFormerConfig, SwinConfig

    id2label = _id2label(role)
    common = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if size == "tiny":
        backbone = SwinConfig(image_size=224, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                              window_size=7, out_features=stages)
        return OneFormerConfig(
            backbone_config=backbone, num_queries=8, conv_dim=32, mask_dim=32, hidden_dim=32,
            encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
            num_attention_heads=4, text_encoder_width=32, text_encoder_num_layers=1,
            text_encoder_proj_layers=1, query_dec_layers=1, **common)
    if role == "oneformer_coco":  # shi-labs/oneformer_coco_swin_large
        backbone = SwinConfig(image_size=384, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
                              window_size=12, out_features=stages)
        return OneFormerConfig(backbone_config=backbone, num_queries=150, **common)
    return OneFormerConfig(**common)  # default backbone == Swin-T, as shi-labs/oneformer_ade20k_swin_tiny


# OneFormer's processor sizing in the real checkpoints' configs (shortest edge, longest edge); the
# TensorRT profiles are derived from it (export/tensorrt.py)
ONEFORMER_EDGES = {"oneformer_coco": (800, 1333), "oneformer_ade20k": (512, 2048)}


def _oneformer_processor(role: str, size: str, clip_tokenizer):
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    if size == "tiny":
        edges = (128, 512)
    else:  # the real checkpoints' test sizes
        edges = ONEFORMER_EDGES[role]
    image_processor = OneFormerImageProcessor(
        size={"shortest_edge": edges[0], "longest_edge": edges[1]},
        image_mean=ONEFORMER_MEAN, image_std=ONEFORMER_STD,
        num_labels=len(_id2label(role)), do_reduce_labels=False, ignore_index=255,
    )
    return OneFormerProcessor(image_processor=image_processor, tokenizer=clip_tokenizer,
                              max_seq_length=CLIP_CONTEXT, task_seq_length=CLIP_CONTEXT)


def _blip(size: str):
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    from ssa.tokenizers_offline import build_blip_tokenizer

    tok = build_blip_tokenizer(1026 if size == "tiny" else 30524)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
               pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    if size == "tiny":
        config = BlipConfig(
            # larger initial weights than the defaults, so random captions depend on the image
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=64, initializer_range=0.2, **ids),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=384, patch_size=16, initializer_range=0.2),
            projection_dim=16)
    else:  # Salesforce/blip-image-captioning-base: ViT-B/16 at 384 + BERT-base decoder with 12 heads
        config = BlipConfig(text_config=dict(num_attention_heads=12, **ids),
                            vision_config=dict(initializer_range=0.02))
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tok)
    return config, processor


def _clip(size: str, clip_tokenizer):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPProcessor

    if size == "tiny":
        config = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=224, patch_size=32),
            projection_dim=16)
    else:  # openai/clip-vit-base-patch32 == CLIPConfig defaults
        config = CLIPConfig()
    return config, CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=clip_tokenizer)


def _clipseg(size: str, clip_tokenizer):
    from transformers import CLIPSegConfig, CLIPSegProcessor, ViTImageProcessor

    if size == "tiny":
        config = CLIPSegConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                               image_size=224, patch_size=16),
            projection_dim=16, extract_layers=[0, 1, 2], reduce_dim=16, decoder_num_attention_heads=2,
            decoder_intermediate_size=32)
    else:  # CIDAS/clipseg-rd16: ViT-B/16 backbone (CLIPSegConfig defaults to patch 32), reduce_dim 16
        config = CLIPSegConfig(vision_config=dict(patch_size=16), reduce_dim=16)
    image_processor = ViTImageProcessor(size={"height": 352, "width": 352}, image_mean=IMAGENET_MEAN,
                                        image_std=IMAGENET_STD)
    return config, CLIPSegProcessor(image_processor=image_processor, tokenizer=clip_tokenizer)


def _sam(size: str):
    from transformers import SamConfig, SamImageProcessor, SamProcessor

    if size == "tiny":
        # large initial weights (the defaults give logits and IoUs of about 1e-4): masks with
        # structure, predicted IoUs and stability scores on both sides of the default thresholds
        config = SamConfig(
            vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                               global_attn_indexes=[1], window_size=8, num_pos_feats=16, mlp_dim=64,
                               initializer_range=0.5),
            prompt_encoder_config=dict(hidden_size=32, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
            initializer_range=0.5)
    else:  # facebook/sam-vit-huge: ViT-H/16 at 1024, 32 layers, global attention every 8th; the
        # vision default init (1e-10) would make every activation ~1e-25: checks vacuous, CPU
        # timings those of near-denormal arithmetic
        config = SamConfig(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                              global_attn_indexes=[7, 15, 23, 31], initializer_range=0.02))
    return config, SamProcessor(image_processor=SamImageProcessor())


def build_random_role(role: str, size: str, clip_tokenizer, seed: int = 0):
    """(model, processor) for one role with seeded random weights; size is "tiny" or "bench"."""
    import torch
    from transformers import (
        BlipForConditionalGeneration,
        CLIPModel,
        CLIPSegForImageSegmentation,
        OneFormerForUniversalSegmentation,
    )

    torch.manual_seed(seed + ALL_ROLES.index(role))
    if role.startswith("oneformer"):
        config = _oneformer_config(role, size)
        model = OneFormerForUniversalSegmentation(config)
        processor = _oneformer_processor(role, size, clip_tokenizer)
    elif role == "blip":
        config, processor = _blip(size)
        model = BlipForConditionalGeneration(config)
    elif role == "clip":
        config, processor = _clip(size, clip_tokenizer)
        model = CLIPModel(config)
    elif role == "clipseg":
        config, processor = _clipseg(size, clip_tokenizer)
        model = CLIPSegForImageSegmentation(config)
    elif role == SAM:
        from transformers import SamModel

        config, processor = _sam(size)
        model = SamModel(config)
        if size == "tiny":  # sharper masks: stability scores on both sides of the default threshold
            with torch.no_grad():
                for mlp in model.mask_decoder.output_hypernetworks_mlps:
                    mlp.proj_out.weight.mul_(10.0)
                    mlp.proj_out.bias.mul_(10.0)
    else:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ALL_ROLES)}")
    return model.eval(), processor


def model_class(role: str):
    """The transformers class of a role's model."""
    from transformers import (
        BlipForConditionalGeneration,
        CLIPModel,
        CLIPSegForImageSegmentation,
        OneFormerForUniversalSegmentation,
        SamModel,
    )

    classes = {"oneformer_coco": OneFormerForUniversalSegmentation, "oneformer_ade20k": OneFormerForUniversalSegmentation,
               "blip": BlipForConditionalGeneration, "clip": CLIPModel, "clipseg": CLIPSegForImageSegmentation,
               SAM: SamModel}
    if role not in classes:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ALL_ROLES)}")
    return classes[role]


def load_role_model(source: str | Path, role: str):
    """A role's model in eval mode from a `save_pretrained` folder (or a hub id)."""
    return model_class(role).from_pretrained(source).eval()


# what a checkpoint folder needs beyond its weights (the files transformers reads to build it)
SNAPSHOT_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")


def class_info_path(snapshot_dir: Path, checkpoint: Path) -> tuple[Path | None, str | None]:
    """(local folder, file name) of a OneFormer checkpoint's class-info file in a snapshot folder:
    its `preprocessor_config.json` names `class_info_file` in the dataset repository `repo_path`
    (shi-labs/oneformer_demo), which `--download` stores under `<snapshot_dir>/datasets/<repo_path>`.
    (None, None) for a checkpoint that names none."""
    config = _image_processor_config(checkpoint)
    name = config.get("class_info_file")
    if not name:
        return None, None
    return snapshot_dir / "datasets" / config.get("repo_path", "shi-labs/oneformer_demo"), name


def _download_role(role: str, source: str, snapshot_dir: Path | None = None):
    """(model, processor) of a real checkpoint: a hub id, or a local snapshot folder. OneFormer's
    processor reads its class-info file from the snapshot folder (never the hub) when it is local."""
    from transformers import AutoProcessor

    kwargs = {}
    if snapshot_dir is not None and role in DATASET_OF and Path(source).is_dir():
        folder, name = class_info_path(snapshot_dir, Path(source))
        if name is not None:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{source}: its processor needs the class-info file {name} of the dataset "
                                        f"repository, expected at {folder / name}; fetch it with `ssa models "
                                        f"--profile P --download {snapshot_dir}` on a machine with internet")
            kwargs["repo_path"] = str(folder)  # a local folder: OneFormer's processor opens the file there
    return load_role_model(source, role), AutoProcessor.from_pretrained(source, **kwargs)


def _keep_class_info(processor, folder: Path) -> None:
    """A OneFormer processor that read a class-info file from a local folder: the file is copied
    next to the saved processor, which `load_processor` reads it from, so a profile folder moved
    to another node (or the snapshot folder deleted) still loads."""
    image_processor = getattr(processor, "image_processor", None)
    repo_path, name = getattr(image_processor, "repo_path", None), getattr(image_processor, "class_info_file", None)
    if repo_path and name and (Path(repo_path) / name).is_file():
        shutil.copyfile(Path(repo_path) / name, folder / name)


def load_processor(role_dir: str | Path):
    """A saved role's processor (AutoProcessor). OneFormer's reads its class-info file from the
    role folder when the file is there (`_keep_class_info`), never from where it was first read
    nor from the hub."""
    from transformers import AutoProcessor

    role_dir = Path(role_dir)
    kwargs = {}
    name = _image_processor_config(role_dir).get("class_info_file")
    if name and (role_dir / name).is_file():
        kwargs["repo_path"] = str(role_dir)
    return AutoProcessor.from_pretrained(role_dir, **kwargs)


def _image_processor_config(role_dir: Path) -> dict[str, Any]:
    """The image processor's saved settings: inside processor_config.json (transformers 5) or in
    preprocessor_config.json (the hub checkpoints' layout); {} when neither is there."""
    if (role_dir / "processor_config.json").is_file():
        config = json.loads((role_dir / "processor_config.json").read_text())
        if isinstance(config.get("image_processor"), dict):
            return config["image_processor"]
    if (role_dir / "preprocessor_config.json").is_file():
        return json.loads((role_dir / "preprocessor_config.json").read_text())
    return {}


def download_snapshots(profile: str, snapshot_dir: str | Path, roles: tuple[str, ...] = ALL_ROLES,
                       log: Callable[[str], None] = print) -> Path:
    """Every checkpoint a real profile needs, and OneFormer's class-info files, from the hub into
    `snapshot_dir` in the layout `build_profile(snapshot_dir=...)` reads: `<dir>/<hub id>/` per
    model, `<dir>/datasets/<repo_path>/<class_info_file>` per class-info file."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if profile not in ("light", "full"):
        raise ValueError(f"--download is for the real profiles (light, full), not {profile!r}")
    snapshot_dir = Path(snapshot_dir)
    for role in roles:
        hub_id = HUB_IDS[profile][role]
        local = snapshot_dir / hub_id
        snapshot_download(hub_id, local_dir=local, allow_patterns=list(SNAPSHOT_FILES))
        log(f"[{profile}] {role}: {hub_id} -> {local}")
        folder, name = class_info_path(snapshot_dir, local)
        if name is not None:
            repo = str(folder.relative_to(snapshot_dir / "datasets"))
            hf_hub_download(repo, name, repo_type="dataset", local_dir=folder)
            log(f"[{profile}] {role}: class info {repo}/{name} -> {folder / name}")
    return snapshot_dir


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def build_profile(profile: str, out_dir: str | Path, snapshot_dir: str | Path | None = None,
                  roles: tuple[str, ...] = ALL_ROLES, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write profile `profile` to `out_dir` (one folder per role + profile.json); return out_dir.

    For light/full, each role comes from `snapshot_dir/<hub id>` when that folder exists, else from
    the hub. A folder is written under a temporary name and renamed, so it is whole or absent.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_tokenizer = None
    if profile in ("tiny", "bench"):
        from ssa.tokenizers_offline import build_clip_tokenizer

        clip_tokenizer = build_clip_tokenizer()
    sources = {}
    for role in roles:
        start = time.perf_counter()
        if profile in ("tiny", "bench"):
            model, processor = build_random_role(role, profile, clip_tokenizer, seed)
            sources[role] = f"random weights, seed {seed}, architecture of {HUB_IDS[profile][role]}"
        else:
            hub_id = HUB_IDS[profile][role]
            local = Path(snapshot_dir) / hub_id if snapshot_dir else None
            if local is not None and not local.is_dir() and _offline():
                raise FileNotFoundError(f"{snapshot_dir}: no {hub_id} for the {role} role (offline: HF_HUB_OFFLINE=1); "
                                        f"fetch it with `ssa models --profile {profile} --download {snapshot_dir}`")
            source = str(local) if local is not None and local.is_dir() else hub_id
            model, processor = _download_role(role, source, Path(snapshot_dir) if snapshot_dir else None)
            sources[role] = source
        tmp = out_dir / f".{role}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _keep_class_info(processor, tmp)
        shutil.rmtree(out_dir / role, ignore_errors=True)
        tmp.rename(out_dir / role)
        params = sum(p.numel() for p in model.parameters())
        log(f"[{profile}] {role}: {params / 1e6:.1f}M parameters in {time.perf_counter() - start:.1f}s")
    manifest_path = out_dir / "profile.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(profile=profile, package_version=__version__)
    manifest.setdefault("model_ids", {}).update({r: HUB_IDS[profile][r] for r in roles})
    manifest.setdefault("sources", {}).update(sources)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
