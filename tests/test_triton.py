"""The real embedded tritonserver on the tiny profile: labels equal to the reference pipeline's on
every mask of the example set; bad requests get their own error; the gpu target's configs parse
with Triton's schema and agree with the cpu target's."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.engine_client import EngineRequestError, annotate
from model_repository.server import EmbeddedServer
from ssa.dataset import folder_items


@pytest.fixture(scope="module")
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.url)


def test_parity_with_reference_on_every_mask(example_dir, grpc_client, reference_labels):
    compared = 0
    for item in folder_items(example_dir):
        expected = reference_labels[item.stem]
        got = annotate(grpc_client, item.image.read_bytes(), item.annotations.read_bytes())
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert (g.class_name, g.class_proposals) == (e.class_name, e.class_proposals), (item.stem, i)
            assert g.caption == e.caption
            assert g.proposal_scores == pytest.approx(e.proposal_scores, abs=1e-4)
            assert g.vote_share == pytest.approx(e.vote_share, abs=0.02)
        compared += len(got)
    assert compared == 60


def test_bad_requests_fail_alone_in_a_batch(example_dir, grpc_client):
    good = [(example_dir / f"sa_{i}.jpg").read_bytes() for i in (2, 5)]
    docs = [(example_dir / f"sa_{i}.json").read_bytes() for i in (2, 5)]
    doc = json.loads(docs[0])
    doc["annotations"][0]["segmentation"]["counts"] = "###corrupt###"
    requests = [(good[0], docs[0]), (b"not an image", docs[0]), (good[0], json.dumps(doc).encode()),
                (good[1], docs[1]), (good[1], b"{broken json")]

    def send(req):
        try:
            return annotate(grpc_client, *req)
        except EngineRequestError as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:  # sent together, so Triton batches them
        results = list(pool.map(send, requests))
    assert not isinstance(results[0], Exception) and not isinstance(results[3], Exception)
    assert len(results[0]) == len(json.loads(docs[0])["annotations"])
    assert "unreadable image" in str(results[1])
    assert "RLE counts are corrupt" in str(results[2]) and "annotation id=" in str(results[2])
    assert "invalid JSON" in str(results[4])


def _infer(protocol: str, url: str, image: bytes, document: bytes, params: bytes | None):
    """One raw request to ssa_engine with tritonclient's `protocol` module (grpc or http)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = {"grpc": grpcclient, "http": httpclient}[protocol]
    inputs = []
    for name, value in (("image", image), ("annotations", document), ("params", params)):
        if value is not None:
            t = module.InferInput(name, [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[value]], dtype=object))
            inputs.append(t)
    return module.InferenceServerClient(url).infer("ssa_engine", inputs)


def _executions(grpc_client) -> int:
    """Inference executions of every compute model so far."""
    stats = grpc_client.get_inference_statistics(as_json=True)["model_stats"]
    return sum(int(m.get("execution_count", 0)) for m in stats if m["name"] not in ("ssa_engine", "ssa_health"))


def test_client_faults_are_invalid_arg_over_grpc_and_http(example_dir, server, grpc_client):
    """Out-of-range parameters and corrupt inputs: INVALID_ARGUMENT (gRPC) / 400 (HTTP), refused
    before any compute model runs; a good request afterwards still works."""
    from tritonclient.utils import InferenceServerException

    image, document = (example_dir / "sa_2.jpg").read_bytes(), (example_dir / "sa_2.json").read_bytes()
    bad_rle = json.loads(document)
    bad_rle["annotations"][0]["segmentation"]["counts"] = "###corrupt###"
    cases = {
        "huge caption and batch": (image, document, b'{"caption_max_length": 100000, "batch_size": 100000}',
                                   "caption_max_length must be between 2 and 64"),
        "top_k zero": (image, document, b'{"top_k": 0}', "top_k must be between 1 and 20"),
        "top_k not an integer": (image, document, b'{"top_k": "3"}', "top_k must be an integer"),
        "unknown parameter": (image, document, b'{"topk": 3}', "unknown parameter(s) topk"),
        "params not JSON": (image, document, b"top_k=3", "invalid params"),
        "params not an object": (image, document, b"[3]", "parameters must be a JSON object"),
        "clipseg side": (image, document, b'{"clipseg_size": 256}', "clipseg_size is fixed at 512"),
        "corrupt image": (b"not an image", document, None, "unreadable image"),
        "empty image": (b"", document, None, "image file is empty"),
        "invalid JSON": (image, b"{broken json", None, "invalid JSON"),
        "corrupt RLE": (image, json.dumps(bad_rle).encode(), None, "RLE counts are corrupt"),
    }
    before = _executions(grpc_client)
    for name, (img, doc, params, message) in cases.items():
        with pytest.raises(InferenceServerException) as grpc_error:
            _infer("grpc", server.url, img, doc, params)
        assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT", (name, grpc_error.value)
        assert message in grpc_error.value.message(), (name, grpc_error.value.message())
        with pytest.raises(InferenceServerException) as http_error:
            _infer("http", f"127.0.0.1:{server.http_port}", img, doc, params)
        assert http_error.value.status() == "400", (name, http_error.value)
        assert message in http_error.value.message(), (name, http_error.value.message())
        assert "0x" not in grpc_error.value.message()  # no Python object addresses in a reason
    assert _executions(grpc_client) == before, "a compute model ran for a request refused as the client's fault"
    result = _infer("http", f"127.0.0.1:{server.http_port}", image, document, b'{"top_k": 2}')
    assert result.as_numpy("class_proposals").shape[-1] == 2


def test_engine_parameters_are_honoured(example_dir, grpc_client):
    from ssa.params import EngineParams

    labels = annotate(grpc_client, (example_dir / "sa_3.jpg").read_bytes(), (example_dir / "sa_3.json").read_bytes(),
                      EngineParams(top_k=1))
    assert all(len(lab.class_proposals) == 1 and lab.class_name == lab.class_proposals[0] for lab in labels)


def _configs(repo: Path) -> dict:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        out[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return out


def test_gpu_configs_parse_and_agree_with_cpu(repositories):
    cpu, gpu = _configs(repositories["cpu"]), _configs(repositories["gpu"])
    assert set(cpu) == set(gpu) and {"ssa_engine", "sam_masks", "ssa_health"} <= set(cpu) and len(cpu) == 14
    for name, c in cpu.items():
        g = gpu[name]
        assert c.max_batch_size == g.max_batch_size
        for a, b in ((c.input, g.input), (c.output, g.output)):
            assert [(t.name, t.data_type, list(t.dims)) for t in a] == [(t.name, t.data_type, list(t.dims)) for t in b]
        if name not in ("ssa_engine", "blip_caption", "sam_masks", "ssa_health"):
            assert c.backend == "python" and g.platform == "onnxruntime_onnx"
            assert g.instance_group[0].kind == g.instance_group[0].KIND_GPU
            accel = g.optimization.execution_accelerators.gpu_execution_accelerator[0]
            assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
            assert (repositories["gpu"] / name / "1" / "model.onnx").is_file()
    # the Python models that take device tensors see them as sent; ssa_engine on the GPU, two
    # instances so one image's host work overlaps another's models; the cpu target as before
    for name in ("ssa_engine", "blip_caption"):
        assert gpu[name].parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in cpu[name].parameters
    engine_gpu, engine_cpu = gpu["ssa_engine"], cpu["ssa_engine"]
    assert engine_gpu.instance_group[0].kind == engine_gpu.instance_group[0].KIND_GPU
    assert engine_gpu.instance_group[0].count == 2 and engine_cpu.instance_group[0].count == 1
    assert engine_gpu.parameters["device"].string_value == "cuda"
    assert engine_cpu.parameters["device"].string_value == "cpu"
    # rows per sub-request: on the CPU 8 crops for the image towers, the caption loop its max_batch_size
    for key, on_gpu, on_cpu in (("images_in_progress", "2", "1"), ("concurrent_image_stage", "1", "0"),
                                ("sub_max_batch_size", "32", "8"),
                                ("caption_max_batch_size", *[str(cpu["blip_caption"].max_batch_size)] * 2)):
        assert (engine_gpu.parameters[key].string_value, engine_cpu.parameters[key].string_value) == (on_gpu, on_cpu)
    for health in (gpu["ssa_health"], cpu["ssa_health"]):  # the probe runs on the CPU whatever the target
        assert health.backend == "python" and health.instance_group[0].kind == health.instance_group[0].KIND_CPU
        assert health.parameters["heal"].string_value == "1"
    for key in ("max_masks", "max_image_pixels", "memory_budget_mb"):
        assert engine_gpu.parameters[key].string_value == engine_cpu.parameters[key].string_value == "auto"
    outputs = json.loads(engine_gpu.parameters["sub_model_outputs"].string_value)
    assert outputs["blip_caption"] == ["token_ids"] and outputs["clipseg_visual"] == [
        t.name for t in gpu["clipseg_visual"].output]


def test_server_reports_unusable_repository(tmp_path):
    from model_repository.server import ServerError

    with pytest.raises(ServerError, match="not a generated model repository"):
        EmbeddedServer(tmp_path).start()


def test_overlapped_engine_equals_the_reference(tiny_profile, tiny_export, example_dir, reference_labels, tmp_path):
    """The gpu target's ssa_engine path on the CPU: the image stage's sub-requests in flight together
    (async_exec) and the requests of a batch interleaved; every label still equals the reference.
    Its compute models run on ONNX Runtime (the shared server's on OpenVINO): both backends are
    held to the reference."""
    import tritonclient.grpc as grpcclient

    from model_repository.generate import generate_repository
    from ssa.params import EngineParams

    repo = generate_repository(tiny_export, tiny_profile, tmp_path / "overlap", "cpu", overlap=True,
                               backend="onnxruntime")
    items = list(folder_items(example_dir))[:3]
    chunked = EngineParams(batch_size=3)  # 10 masks an image: 4 chunks, each BLIP + CLIP pair in flight together
    with EmbeddedServer(repo, log_path=tmp_path / "triton.log") as s:
        client = grpcclient.InferenceServerClient(s.url)
        with ThreadPoolExecutor(len(items)) as pool:  # together, so Triton batches them
            results = list(pool.map(lambda i: annotate(client, i.image.read_bytes(), i.annotations.read_bytes(),
                                                       chunked), items))
    for item, got in zip(items, results):
        assert [(g.class_name, g.class_proposals, g.caption) for g in got] == \
               [(e.class_name, e.class_proposals, e.caption) for e in reference_labels[item.stem]]
