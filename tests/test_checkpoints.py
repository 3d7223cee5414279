"""The light profile as a GPU node without internet builds it (offline, from a snapshot folder
laid out as the hub's, with the published checkpoints' configuration files and small random
weights): it exports, serves in a real tritonserver, and labels the example set as the reference
pipeline does on the same profile."""

from __future__ import annotations

import json

import pytest

from client.engine_client import annotate
from model_repository.server import EmbeddedServer
from ssa.dataset import folder_items


@pytest.fixture(scope="module")
def light_export(light_profile, tmp_path_factory):
    from export.core import export_profile

    out = tmp_path_factory.mktemp("light_onnx")
    export_profile(light_profile, out, log=lambda m: None)
    return out


def test_light_profile_exports_serves_and_labels_like_the_reference(light_profile, light_export, example_dir,
                                                                    tmp_path):
    import tritonclient.grpc as grpcclient

    from model_repository.generate import generate_repository
    from ssa.reference import TorchModels
    from ssa.reference import annotate_image as reference_image
    from ssa.runner import load_item

    manifest = json.loads((light_export / "manifest.json").read_text())
    assert manifest["metadata"]["blip"]["eos_token_id"] == 102  # sep ends a caption, not the config's eos 2
    repository = generate_repository(light_export, light_profile, tmp_path / "repository", "cpu", precision="fp32")
    models = TorchModels.load(light_profile)
    compared = 0
    with EmbeddedServer(repository, log_path=tmp_path / "triton.log") as server:
        client = grpcclient.InferenceServerClient(server.url)
        for item in list(folder_items(example_dir))[:3]:
            image, _, masks = load_item(item)
            expected = reference_image(image, masks, models)
            got = annotate(client, item.image.read_bytes(), item.annotations.read_bytes())
            assert [(g.class_name, g.class_proposals, g.caption) for g in got] == \
                   [(e.class_name, e.class_proposals, e.caption) for e in expected], item.stem
            for g, e in zip(got, expected):
                assert g.proposal_scores == pytest.approx(e.proposal_scores, abs=1e-4)
            compared += len(got)
    assert compared == 30
