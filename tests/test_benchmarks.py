"""The benchmark command end to end on the tiny profile (a small sample): it produces a well-formed
result, table and plots, with every label compared. Speed is not checked here."""

from __future__ import annotations

import json

from benchmarks.run import STAGES, main


def test_benchmark_smoke(tiny_profile, tiny_export, tmp_path, capsys):
    """Two engine configurations (today's ONNX Runtime fp32, OpenVINO bf16) beside the reference:
    every figure there, FLOPs and shares of the measured peak per stage, labels compared."""
    out = tmp_path / "bench"
    code = main(["--profile", "tiny", "--models_dir", str(tiny_profile.parent), "--onnx_dir", str(tiny_export),
                 "--configs", "onnxruntime:fp32,openvino:bf16", "--repository_root", str(tmp_path / "repos"),
                 "--images", "2", "--masks", "3", "--repeats", "2", "--in_flight", "1,2",
                 "--scaling_masks", "2,4", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    timings = json.loads((out / "timings.json").read_text())  # written before the counting passes
    assert set(timings["engines"]) == set(result["engines"]) and timings["reference"]["runs_seconds"]
    masks = result["sample"]["masks"]
    assert result["sample"]["images"] == 2 and masks == sum(result["sample"]["masks_per_image"])
    assert list(result["engines"]) == ["onnxruntime-fp32", "openvino-bf16"]
    assert result["peaks"]["fp32"] > 1e9 and result["machine"]["cpu"]
    # the peak is measured before and after the timed runs; shares are taken against the higher
    measured = result["peak_measurements"]
    for precision, peak in result["peaks"].items():
        values = [measured[w][precision] for w in ("before", "after")]
        assert peak == (max(values) if all(values) else None), (precision, measured)
    assert "two measurements, before and after the timed runs: fp32" in (out / "table.md").read_text()
    baseline, bf16 = result["engines"]["onnxruntime-fp32"], result["engines"]["openvino-bf16"]
    assert baseline["labels"]["equal"] == baseline["labels"]["total"] == masks  # fp32: identical labels
    for engine in (baseline, bf16):
        assert engine["labels"]["differ_clear"] == []
        assert engine["images_per_second"] > 0 and len(engine["runs_seconds"]) == 2
        assert set(engine["stage_seconds_per_image"]) == set(STAGES)
        assert engine["client_peak_memory_mib"] > 0 and engine["server_peak_memory_mib"] > 0
        eff = engine["efficiency"]
        assert all(eff[s]["flops"] > 0 and 0 < eff[s]["share_of_peak"] < 1 for s in ("oneformer", "caption", "clipseg"))
        assert eff["models"]["flops"] == sum(eff[s]["flops"] for s in ("oneformer", "caption", "clip", "clipseg"))
        # batching: every compute model runs once per image at 3 masks per image
        executions = engine["model_executions_per_image"]
        assert executions["ssa_engine"] == 1 and executions["clip_image"] == 1 and executions["oneformer_coco"] == 1
    ref = result["reference"]
    assert ref["efficiency"]["clipseg"]["flops"] > bf16["efficiency"]["clipseg"]["flops"]  # a visual pass per prompt
    assert ref["per_image_seconds"] > 0 and ref["per_mask_seconds"] > 0
    assert result["triton"] == bf16 and result["ratio"] == bf16["images_per_second"] / ref["images_per_second"]
    assert [r["in_flight"] for r in result["in_flight_sweep"]] == [1, 2] and baseline["in_flight_sweep"] == []
    scaling = result["masks_scaling"]
    assert [r["masks"] for r in scaling] == [2, 4]
    assert scaling[1]["efficiency"]["models"]["flops"] > scaling[0]["efficiency"]["models"]["flops"]
    assert scaling[1]["reference_seconds_per_image"] == ref["per_image_seconds"] + 4 * ref["per_mask_seconds"]
    for point in scaling:  # each point twice: the first pass with new names, then the timed one
        assert point["first_pass_seconds_per_image"] > 0
        assert point["first_pass_ratio"] == point["reference_seconds_per_image"] / point["first_pass_seconds_per_image"]
    runs = out / "runs" / "openvino-bf16"
    assert all((runs / f"masks_{n}_first" / "summary.json").is_file() for n in (2, 4))
    table = (out / "table.md").read_text()
    assert "| images/s |" in table and "GFLOP/s (share of peak)" in table and "clear decisions that differ" in table
    assert table in capsys.readouterr().out
    for name in ("seconds_per_image_vs_masks", "throughput_vs_in_flight"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_perf_analyzer_inputs_match_the_model_configs(repositories, example_dir, tmp_path):
    import base64

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from benchmarks.perf_inputs import make_inputs

    written = make_inputs(repositories["cpu"], example_dir, tmp_path, images=2)
    assert len(written) == 10
    itemsize = {model_config_pb2.TYPE_FP32: 4, model_config_pb2.TYPE_INT64: 8, model_config_pb2.TYPE_INT32: 4}
    for path in written:
        config = text_format.Parse((repositories["cpu"] / path.stem / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        entries = json.loads(path.read_text())["data"]
        assert entries, path
        for entry in entries:
            assert set(entry) <= {t.name for t in config.input}
            assert {t.name for t in config.input if not t.optional} <= set(entry), path
            for t in config.input:
                if t.name not in entry:
                    continue
                shape = entry[t.name]["shape"]
                assert len(shape) == len(t.dims) and all(d == -1 or d == s for d, s in zip(t.dims, shape))
                if t.data_type != model_config_pb2.TYPE_STRING:
                    n = 1
                    for s in shape:
                        n *= s
                    assert len(base64.b64decode(entry[t.name]["b64"])) == n * itemsize[t.data_type], (path, t.name)


def test_device_benchmark_on_the_cpu(tiny_profile, tmp_path, capsys):
    """`python -m benchmarks --device cpu`: reference and engine (PyTorch wrappers) in this
    process; on the CPU in fp32 every label equals the reference's; the transfer figures are there
    and within the budget."""
    from benchmarks.device import STAGES as DEVICE_STAGES
    from benchmarks.device import main as device_main

    out = tmp_path / "device"
    code = device_main(["--device", "cpu", "--precision", "fp32", "--profile", "tiny", "--models_dir",
                        str(tiny_profile.parent), "--images", "2", "--masks", "4", "--sam", "8", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    masks = result["sample"]["masks"]
    assert result["sample"]["images"] == 2 and masks == sum(result["sample"]["masks_per_image"]) > 2
    agreement = result["agreement"]["fp32"]
    assert agreement["equal"] == agreement["total"] == masks
    assert agreement["not_near_tie_equal"] == agreement["not_near_tie_total"] <= masks
    engine = result["engine"]["fp32"]
    assert set(engine["stage_seconds_per_image"]) == set(DEVICE_STAGES)
    assert all(engine["stage_seconds_per_image"][s] > 0 for s in ("oneformer", "caption", "clip", "clipseg"))
    per_mask = engine["transfer_bytes_per_mask"]
    assert per_mask["image"] > 0 and per_mask["masks"] > 0 and 0 < per_mask["beyond_image_and_masks"] <= 200_000
    assert engine["peak_gpu_memory_mib"] is None  # no GPU here
    assert result["peaks"]["fp32"] > 1e9
    for run in (engine, result["reference"]):  # FLOPs and the share of the measured peak, per stage
        eff = run["efficiency"]
        assert all(eff[s]["flops"] > 0 and 0 < eff[s]["share_of_peak"] < 1 for s in ("oneformer", "caption", "clipseg"))
    sam = result["sam"]  # SSA + SAM: the mask generator, reference and engine path on the device
    assert sam["reference"]["seconds_per_image"] > 0 and sam["fp32"]["seconds_per_image"] > 0
    assert sam["fp32"]["agreement"]["unexplained"] == 0
    assert sam["fp32"]["agreement"]["matched"] == sam["fp32"]["agreement"]["reference"] == sum(sam["reference"]["masks"])
    table = (out / "table.md").read_text()
    assert "labels equal, not near-ties" in table and "SAM s/image" in table and "share of peak" in table and table in capsys.readouterr().out


def test_soak_benchmark_smoke(tiny_profile, repositories, tmp_path, capsys):
    """The soak command for a few seconds: every request answered, the same answer each time,
    memory sampled, a table and a plot. (The 10-minute figures are the README's, not a test's.)"""
    from benchmarks.soak import main as soak

    out = tmp_path / "soak"
    code = soak(["--profile", "tiny", "--models_dir", str(tiny_profile.parent), "--repository",
                 str(repositories["cpu"]), "--runners", "2", "--minutes", "0.25", "--window", "5", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert code == 0 and result["errors"] == 0 and result["wrong_answers"] == 0 and result["images"] > 0
    assert result["runners"] == 2 and len(result["memory_mib"]) >= 10 and result["memory_peak_mib"] > 100
    # consecutive 5-s windows from the start to the last answer (requests in flight at the end finish)
    windows = [t for t, _ in result["throughput"]]
    assert len(windows) >= 3 and windows == [5.0 * (i + 1) for i in range(len(windows))]
    assert "errors / wrong answers | 0 / 0" in (out / "table.md").read_text()
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sam_benchmark_smoke(tiny_profile, tiny_export, tmp_path, capsys):
    """SSA + SAM's benchmark on one photo: the reference and Triton SAM timed, their masks compared
    (none unexplained), the whole SSA + SAM run through ssa annotate."""
    import shutil

    from benchmarks.sam import main as sam_benchmark

    export = tmp_path / "onnx"
    shutil.copytree(tiny_export, export)
    out = tmp_path / "sam"
    code = sam_benchmark(["--profile", "tiny", "--models_dir", str(tiny_profile.parent), "--export_dir", str(export),
                          "--images", "1", "--sam", "points_per_side=8", "--sam", "box_nms_thresh=1.0", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert code == 0 and result["unexplained"] == [] and result["images"] == 1
    assert result["masks_compared"]["matched"] == result["masks_compared"]["reference"] > 0
    assert result["reference_sam_seconds_per_image"] > 0 and result["triton_sam_seconds_per_image"] > 0
    assert result["labelled_masks"] == result["masks_per_image"][0]
    assert "SAM s/image" in (out / "table.md").read_text()


def test_repeated_crops_are_counted(example_dir, tiny_profile, tmp_path, capsys):
    """Two masks with the same box give the same crop at every scale, another box none; the
    command counts the example set and SAM's masks of its photos and says whether sharing pays."""
    from benchmarks.repeats import MODELS, main, repeated_crops

    size = (100, 120)
    assert repeated_crops([[10, 10, 20, 20], [10, 10, 20, 20], [50, 40, 5, 5]], size) == dict.fromkeys(MODELS, 1)
    # boxes that differ but clamp to the same crop (the whole image) repeat too
    assert repeated_crops([[0, 0, 119, 99], [1, 1, 118, 98]], size) == dict.fromkeys(MODELS, 1)
    assert main(["--data", str(example_dir), "--sam_profile", "tiny", "--models_dir", str(tiny_profile.parent),
                 "--sam_images", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    sources = list(result["sources"].values())
    assert len(sources) == 2 and sources[0]["crops"] == 60 and sources[1]["images"] == 2
    assert "threshold" in (tmp_path / "table.md").read_text() and "repeated" in capsys.readouterr().out


def test_device_benchmark_waits_for_its_own_gpu(monkeypatch):
    """The clock synchronises the benchmark's device (cuda:N), not the current one (cuda:0)."""
    import torch

    from benchmarks.device import Clock

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    clock = Clock(torch.device("cuda", 1))
    assert clock() > 0 and synced == [torch.device("cuda", 1)]
    Clock(torch.device("cpu"))()
    assert synced == [torch.device("cuda", 1)]
