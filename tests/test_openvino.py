"""The OpenVINO backend: every exported graph against ONNX Runtime (fp32 within the export's
tolerance, bf16 within a stated bound), precision settings and their errors, the compile cache,
the native Triton openvino config, and bf16 labels through the embedded tritonserver agreeing with
the reference on every decision that is not a near-tie, with the precision in the provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssa.openvino_models import (
    OpenVinoGraph,
    compile_graph,
    cpu_has_bf16,
    parse_precisions,
    resolve_precision,
)

# bf16 keeps 8 bits of mantissa: on the tiny graphs the largest difference to fp32 ONNX Runtime
# measured 0.077 of the output's range (OneFormer ADE20K)
BF16_BOUND = 0.12


def graph_inputs(tiny_profile: Path, name: str, spec_json: dict) -> dict[str, np.ndarray]:
    from export.specs import SPECS
    from ssa.profiles import load_role_model

    spec = SPECS[name]
    model = load_role_model(tiny_profile / spec.role, spec.role).eval()
    return {t.name: e.numpy() for t, e in zip(spec.inputs(model), spec.example(model, 2, 1))}


@pytest.mark.parametrize("name", ["oneformer_coco", "oneformer_ade20k", "blip_vision", "blip_text_prefill",
                                  "blip_text_step", "clip_image", "clip_text", "clipseg_visual", "clipseg_text",
                                  "clipseg_decoder", "sam_encoder"])
def test_each_graph_against_onnx_runtime(tiny_profile, tiny_export, name):
    from export.specs import SPECS
    from ssa.onnx_models import ort_session

    spec_json = json.loads((tiny_export / "manifest.json").read_text())["models"][name]
    feed = graph_inputs(tiny_profile, name, spec_json)  # the export check's second variant, batch 2
    session = ort_session(tiny_export / spec_json["file"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    names = [t["name"] for t in spec_json["inputs"] + spec_json["outputs"]]
    spec = SPECS[name]
    for precision in ("fp32", "bf16"):
        got = OpenVinoGraph(tiny_export / spec_json["file"], 2, precision, names=names)(feed)
        assert set(got) == set(expected)
        for out, ref in expected.items():
            assert got[out].shape == ref.shape and got[out].dtype == ref.dtype
            diff, scale = float(np.abs(got[out] - ref).max()), float(np.abs(ref).max())
            if precision == "fp32":  # the export's own tolerance against PyTorch
                assert diff <= spec.atol + spec.rtol * scale, (out, diff)
            elif cpu_has_bf16():
                assert diff <= BF16_BOUND * scale, (out, diff, scale)
                assert diff > 0  # it did run in bf16 (bf16 on these graphs never matches fp32 exactly)


def test_sam_decoder_stays_on_onnx_runtime(repositories):
    """OpenVINO's f32 misses the export tolerance on SAM's point decoder (ORT_GRAPHS): the openvino
    backend serves it with ONNX Runtime, fp32, and says so in the runtime record."""
    from tests.test_triton import _configs

    configs = _configs(repositories["cpu_bf16"])
    model_py = (repositories["cpu_bf16"] / "sam_decoder" / "1" / "model.py").read_text()
    assert "ONNX Runtime" in model_py.splitlines()[0] and "precision" not in configs["sam_decoder"].parameters
    assert configs["sam_encoder"].parameters["precision"].string_value == "bf16"
    runtime = json.loads(configs["ssa_engine"].parameters["runtime_json"].string_value)
    assert runtime["onnxruntime"] == ["sam_decoder"] and runtime["precision"]["sam_decoder"] == "fp32"


def test_precision_is_resolved_never_silently(monkeypatch):
    import ssa.openvino_models as ov_models

    assert resolve_precision("fp32") == ("fp32", None)
    monkeypatch.setattr(ov_models, "cpu_has_bf16", lambda: False)
    ran, note = ov_models.resolve_precision("bf16")
    assert ran == "fp32" and "no bf16 units" in note
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")


def test_precision_specs_and_what_each_backend_refuses(tiny_export):
    from model_repository.generate import precision_plan

    names = ["oneformer_coco", "clip_text"]
    assert parse_precisions("bf16", names) == {"oneformer_coco": "bf16", "clip_text": "bf16"}
    assert parse_precisions("bf16,oneformer_coco=fp32", names) == {"oneformer_coco": "fp32", "clip_text": "bf16"}
    for bad, message in (("bf8", "precisions are"), ("oneformer_coco=fp32", "every graph first"),
                         ("bf16,clip=fp32", "not a graph")):
        with pytest.raises(ValueError, match=message):
            parse_precisions(bad, names)
    assert precision_plan("onnxruntime", None, names) == dict.fromkeys(names, "fp32")
    with pytest.raises(ValueError, match="onnxruntime backend runs fp32 only"):
        precision_plan("onnxruntime", "bf16", names)
    with pytest.raises(ValueError, match="no setting that forces f32"):
        precision_plan("openvino_native", "bf16,clip_text=fp32", names)
    with pytest.raises(ValueError, match="runs on ONNX Runtime"):
        precision_plan("openvino", "fp32,sam_decoder=bf16", ["sam_decoder", "clip_text"])
    # "bf16": the preset (text encoders and CLIPSeg's decoder fp32); a spec as written forces them
    assert precision_plan("openvino", "bf16", ["sam_decoder", "clip_text", "clip_image"]) == {
        "sam_decoder": "fp32", "clip_text": "fp32", "clip_image": "bf16"}
    assert precision_plan("openvino", "bf16,clip_text=bf16", ["clip_text"]) == {"clip_text": "bf16"}
    assert precision_plan("openvino", None, ["clip_image"]) == {"clip_image": "fp32"}  # the default
    with pytest.raises(ValueError, match="unknown backend"):
        precision_plan("tensorflow", None, names)


def test_bf16_bits_round_as_torch_does():
    from ssa.openvino_models import bf16_bits

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 100,
                             # exact ties (lower 16 bits 0x8000), odd and even upper halves, and zeros
                             (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
                             np.array([0.0, -0.0, 1.0, -3.5], np.float32)])
    torch = pytest.importorskip("torch")
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bf16_bits(values), expected)


def _caption_inputs(tiny_export, rows: int, seed: int):
    import torch

    spec = json.loads((tiny_export / "manifest.json").read_text())["models"]["blip_text_prefill"]
    dims = next(t["dims"] for t in spec["inputs"] if t["name"] == "image_embeds")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *dims[1:], generator=generator)


def test_caption_cache_crosses_in_bf16_and_is_borrowed(tiny_export):
    """The caption loop's cross-attention cache: in bf16 it leaves the prefill as bf16 and the step
    reads it so (half the bytes), with logits exactly those of the f32 hand-over (the graphs round
    it to bf16 either way); in fp32 it stays f32. Either way it is borrowed from the prefill's
    request (no copy) and every other output is the caller's own copy."""
    import torch

    from ssa.openvino_models import caption_graphs, graph_function

    files = (tiny_export / "blip_text_prefill.onnx", tiny_export / "blip_text_step.onnx")
    embeds, ids = _caption_inputs(tiny_export, 3, 0), torch.zeros(3, 1, dtype=torch.int64)

    def prefill_then_step(prefill, step):
        out = prefill({"input_ids": ids, "image_embeds": embeds})
        feed = {"input_ids": ids, **{k: v for k, v in out.items() if k.startswith("cross_")},
                **{"past_" + k[len("present_"):]: v for k, v in out.items() if k.startswith("present_")}}
        return out, step(feed)

    for precision in ("fp32", "bf16"):
        prefill, step = caption_graphs(*files, 2, precision)
        out, logits = prefill_then_step(prefill, step)
        bf16 = precision == "bf16" and cpu_has_bf16()
        cross = {k: v for k, v in out.items() if k.startswith("cross_")}
        assert cross and all(v.dtype == (torch.bfloat16 if bf16 else torch.float32) for v in cross.values())
        assert out["logits"].dtype == logits["logits"].dtype == torch.float32
        plain = [graph_function(OpenVinoGraph(f, 2, precision)) for f in files]  # f32 in and out, all copied
        plain_out, plain_logits = prefill_then_step(*plain)
        assert torch.equal(logits["logits"], plain_logits["logits"])
        assert all(torch.equal(v.float(), plain_out[k]) for k, v in cross.items())
    graph = OpenVinoGraph(files[0], 2, "bf16", bf16_io=("cross_",), borrow=("cross_",))
    assert graph.borrowed == {n for n in graph.outputs if n.startswith("cross_")} != set()
    first = graph({"input_ids": ids.numpy(), "image_embeds": embeds.numpy()})
    kept = {n: first[n].copy() for n in graph.outputs if n not in graph.borrowed}
    graph({"input_ids": ids.numpy(), "image_embeds": (embeds * 2).numpy()})
    assert all(np.array_equal(first[n], kept[n]) for n in kept)  # copies: the next call left them alone


def test_captions_decoded_in_threads_equal_sequential_ones(tiny_export):
    """The prefill's borrowed cache is overwritten by its next call, so one captioner decodes one
    batch at a time: decodes from four threads at once give the captions decoded one by one."""
    import threading

    from ssa.graph_models import BlipCaptioner
    from ssa.openvino_models import caption_graphs

    meta = json.loads((tiny_export / "manifest.json").read_text())["metadata"]["blip"]
    captioner = BlipCaptioner(*caption_graphs(tiny_export / "blip_text_prefill.onnx",
                                              tiny_export / "blip_text_step.onnx", 1, "bf16"), **meta)
    batches = [_caption_inputs(tiny_export, rows, seed) for seed, rows in enumerate((2, 3, 1, 4))]
    expected = [captioner(b, 12) for b in batches]
    got: dict[int, list] = {}

    def decode(i):
        got[i] = [captioner(batches[i], 12) for _ in range(3)]

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import torch

    assert all(torch.equal(ids, expected[i]) for i in range(len(batches)) for ids in got[i])


def test_compiled_graphs_are_cached_on_disk(tiny_export, tmp_path):
    path = tiny_export / "clip_image.onnx"
    first = compile_graph(path, 2, "fp32", tmp_path / "cache")
    again = compile_graph(path, 2, "fp32", tmp_path / "cache")
    assert not first.get_property("LOADED_FROM_CACHE") and again.get_property("LOADED_FROM_CACHE")
    assert any((tmp_path / "cache").iterdir())


def test_native_openvino_config(tiny_profile, tiny_export, tmp_path):
    """Triton's own openvino backend (NGC CPU images): the compute models' configs parse, name the
    ONNX file and the backend's own keys. Not run here: the embedded server has no such backend."""
    from model_repository.generate import generate_repository
    from tests.test_triton import _configs

    repo = generate_repository(tiny_export, tiny_profile, tmp_path / "native", "cpu", backend="openvino_native",
                               precision="bf16", threads=3)
    configs = _configs(repo)
    for name in ("oneformer_coco", "clip_text", "sam_encoder"):
        c = configs[name]
        assert c.backend == "openvino" and c.default_model_filename == "model.onnx"
        assert {k: v.string_value for k, v in c.parameters.items()} == {
            "INFERENCE_NUM_THREADS": "3", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", "HINT_BF16": "YES"}
        assert (repo / name / "1" / "model.onnx").is_file() and not (repo / name / "1" / "model.py").exists()
    assert (repo / "sam_encoder" / "1" / "sam_encoder.onnx.data").is_file()  # external weights beside the graph
    assert configs["sam_decoder"].platform == "onnxruntime_onnx"  # ORT_GRAPHS: Triton's own ONNX Runtime backend
    caption = configs["blip_caption"].parameters
    assert caption["runtime"].string_value == "openvino" and caption["precision"].string_value == "bf16"
    runtime = json.loads(configs["ssa_engine"].parameters["runtime_json"].string_value)
    assert runtime["backend"] == "openvino_native" and runtime["onnxruntime"] == ["sam_decoder"]
    assert {n: p for n, p in runtime["precision"].items() if n != "sam_decoder"} == dict.fromkeys(
        [n for n in runtime["precision"] if n != "sam_decoder"], "bf16")


def test_bf16_server_agrees_on_every_clear_decision(repositories, example_dir, reference_labels, tmp_path):
    """OpenVINO's bf16 preset (bf16 on this CPU's matrix units; text encoders, CLIPSeg's and SAM's decoders fp32), through
    the embedded tritonserver and the batch runner: every label whose reference decisions are all
    clear of a near-tie equals the reference's; the outputs say what ran."""
    from client.engine_client import annotate
    from model_repository.server import EmbeddedServer
    from ssa.agreement import decision_agreement
    from ssa.dataset import folder_items
    from tests.test_runner import run

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units: bf16 runs fp32 here (test_precision_is_resolved_never_silently)")
    import tritonclient.grpc as grpcclient

    with EmbeddedServer(repositories["cpu_bf16"], log_path=tmp_path / "triton.log") as server:
        summary, stop = run([server.url], [example_dir], tmp_path / "out")
        client = grpcclient.InferenceServerClient(server.url)
        items = list(folder_items(example_dir))
        engine = {i.stem: annotate(client, i.image.read_bytes(), i.annotations.read_bytes()) for i in items}
    assert stop is None and not summary.failures and summary.done == len(items)
    result = decision_agreement(reference_labels, engine)
    assert result["differ_clear"] == [], result
    # the check has teeth: CLIP's and CLIPSeg's decisions were compared and mostly clear (the tiny
    # models' captions are all near-ties: their token logits are almost flat)
    d = result["decisions"]
    assert d["clip"]["clear"] >= 10 and d["clipseg"]["clear"] >= 10, result
    doc = json.loads((tmp_path / "out" / example_dir.name / f"{items[0].stem}_semantic.json").read_text())
    runtime = doc["ssa"]["runtime"]
    assert (runtime["target"], runtime["backend"]) == ("cpu", "openvino")
    assert runtime["precision"]["oneformer_coco"] == "bf16" and runtime["precision"]["sam_decoder"] == "fp32"
    assert runtime["precision"]["clip_text"] == runtime["precision"]["clipseg_decoder"] == "fp32"
    for stem, labels in engine.items():  # the runner wrote what the server answered
        doc = json.loads((tmp_path / "out" / example_dir.name / f"{stem}_semantic.json").read_text())
        assert [a["class_name"] for a in doc["annotations"]] == [lab.class_name for lab in labels]
