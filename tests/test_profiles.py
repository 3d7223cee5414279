"""Model profiles build offline; bench models have the real light-mode sizes."""

from __future__ import annotations

import json

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
