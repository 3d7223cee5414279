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
