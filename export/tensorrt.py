"""TensorRT engines (`<model>.plan`) from the exported ONNX files, for the `gpu` target.

    python -m export.tensorrt --export_dir artifacts/onnx/light      # on a GPU node, see the README

Runs where TensorRT's Python API and a GPU are (the NGC PyTorch image of the same release as the
tritonserver image, so both hold the same TensorRT version; docker-compose's `build_engines`).
Each engine is fp16 with one optimization profile covering the batch sizes `ssa_engine` sends
(1 to the model's max_batch_size, optimised for the rows of one request) and the image sizes
OneFormer's processors produce; a timing cache makes rebuilds fast. Each engine is checked against
ONNX Runtime on the same inputs before its file is written; `model_repository generate --target
gpu` then serves every `<model>.plan` with the `tensorrt_plan` platform.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the compute models that become engines (the BLIP text graphs stay in blip_caption, ONNX Runtime)
ENGINE_MODELS = ("oneformer_coco", "oneformer_ade20k", "blip_vision", "clip_image", "clip_text",
                 "clipseg_visual", "clipseg_text", "clipseg_decoder", "sam_encoder", "sam_decoder")
def axis_ranges(sizing: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, tuple[int, int, int]]]:
    """(min, opt, max) of every named dynamic axis other than the batch, per model, derived from
    what the engine can send: OneFormer's sides from its processor's sizing (shortest edge S,
    longest at most L: the longer side never exceeds L, and the shorter one is S, or less for an
    image wider than L:S, down to 1 pixel for a very thin one: the engine refuses no aspect ratio);
    the text encoders' tokens over ssa.preprocess.TEXT_BUCKETS; CLIPSeg's prompts per crop up to
    top_k's bound; SAM's points up to what sam_masks sends."""
    from model_repository.generate import SAM_POINTS_PER_REQUEST
    from ssa.params import PARAM_BOUNDS
    from ssa.preprocess import TEXT_BUCKETS, TEXT_GRAPHS
    from ssa.profiles import ONEFORMER_EDGES

    ranges = {}
    for name, (shortest, longest) in (sizing or ONEFORMER_EDGES).items():
        side = (1, shortest, longest)
        ranges[name] = {"height": side, "width": (1, min(longest, shortest * 4 // 3), longest)}
    for name in TEXT_GRAPHS:  # names at their TEXT_BUCKETS length, most the shortest
        ranges[name] = {"tokens": (TEXT_BUCKETS[0], TEXT_BUCKETS[0], TEXT_BUCKETS[-1])}
    top_k = PARAM_BOUNDS["top_k"]
    ranges["clipseg_decoder"] = {"prompts": (int(top_k[0]), 3, int(top_k[1]))}
    points = SAM_POINTS_PER_REQUEST["gpu"]
    ranges["sam_decoder"] = {"points": (1, points, points)}
    return ranges


FP16_ATOL, FP16_RTOL = 1e-2, 2e-2  # |trt - ort| <= atol + rtol * max|ort|, per output


class TensorRTUnavailable(RuntimeError):
    """TensorRT's Python API (or a GPU for it) is not available here."""


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimization_profile(model: str, inputs: list[dict], max_batch: int, rows_per_request: int) -> list[InputProfile]:
    """(min, opt, max) shapes per input from the manifest's dims (ints, "batch", named axes)."""
    ranges = axis_ranges().get(model, {})
    out = []
    for t in inputs:
        shapes = ([], [], [])
        for d in t["dims"]:
            if isinstance(d, int):
                triple = (d, d, d)
            elif d == "batch":
                triple = (1, min(rows_per_request, max_batch), max_batch)
            elif d in ranges:
                triple = ranges[d]
            else:
                raise ValueError(f"{model} input {t['name']}: no range for the dynamic axis {d!r}; "
                                 f"add it to axis_ranges")
            for shape, v in zip(shapes, triple):
                shape.append(v)
        out.append(InputProfile(t["name"], *(tuple(s) for s in shapes)))
    return out


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable("the tensorrt Python package is not installed: build engines in the NGC "
                                  "PyTorch image (docker compose run build_engines)") from exc
    return trt


def build_engine(onnx_path: Path, profile: list[InputProfile], fp16: bool = True,
                 timing_cache: Path | None = None, workspace_gib: float = 8.0) -> bytes:
    """A serialized TensorRT engine for `onnx_path` with one optimization profile."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for p in profile:
        opt.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(opt)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    if cache is not None:
        timing_cache.write_bytes(memoryview(cache.serialize()))
    return bytes(memoryview(engine))


def run_engine(plan: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a serialized engine once on host arrays (device buffers through PyTorch's CUDA)."""
    trt = _tensorrt()
    try:
        import torch
    except ImportError as exc:
        raise TensorRTUnavailable("checking an engine needs torch with CUDA (the NGC PyTorch image has it)") from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA device")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    buffers = {}
    for name, value in inputs.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(value)).cuda()
        context.set_input_shape(name, tuple(value.shape))
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype,
                                                        device="cuda")
    for name, buf in buffers.items():
        context.set_tensor_address(name, buf.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT execution failed")
    stream.synchronize()
    return {name: buf.cpu().numpy() for name, buf in outputs.items()}


def check_against_ort(plan: bytes, onnx_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |trt - ort| per output; RuntimeError when one exceeds FP16_ATOL + FP16_RTOL * max|ort|."""
    from ssa.onnx_models import ort_session, run_session

    expected = {k: v.numpy() for k, v in run_session(ort_session(onnx_path), inputs).items()}
    got = run_engine(plan, inputs)
    diffs = {}
    for name, ref in expected.items():
        diff = float(np.max(np.abs(got[name].astype(np.float64) - ref))) if ref.size else 0.0
        bound = FP16_ATOL + FP16_RTOL * float(np.max(np.abs(ref))) if ref.size else 0.0
        if not diff <= bound:
            raise RuntimeError(f"{onnx_path.name}: output {name} differs from ONNX Runtime by {diff:.3g} > {bound:.3g}")
        diffs[name] = diff
    return diffs


def example_inputs(inputs: list[dict], profile: list[InputProfile], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shapes: normal floats; token ids within the CLIP vocabulary with
    a full attention mask; OneFormer task tokens."""
    rng = np.random.default_rng(seed)
    out = {}
    for t, p in zip(inputs, profile):
        if t["dtype"] == "FP32":
            out[t["name"]] = rng.standard_normal(p.opt).astype(np.float32)
        elif t["name"] == "attention_mask":
            out[t["name"]] = np.ones(p.opt, np.int64)
        else:
            out[t["name"]] = rng.integers(1, 49000, p.opt).astype(np.int64 if t["dtype"] == "INT64" else np.int32)
    return out


def build_all(export_dir: Path, models: list[str], rows_per_request: int = 32, max_batch: dict | None = None,
              timing_cache: Path | None = None, log=print) -> dict[str, dict]:
    """Build, check and write `<model>.plan` for each model; the check results per model."""
    from model_repository.generate import DEFAULT_MAX_BATCH, MAX_BATCH
    from ssa.atomic import write_bytes_atomic

    manifest = json.loads((export_dir / "manifest.json").read_text())
    max_batch = max_batch or {}
    report = {}
    for name in models:
        if name not in manifest["models"]:
            log(f"{name}: not in this export, skipped")
            continue
        spec = manifest["models"][name]
        batch = max_batch.get(name, MAX_BATCH.get(name, DEFAULT_MAX_BATCH))
        profile = optimization_profile(name, spec["inputs"], batch, rows_per_request)
        log(f"{name}: building fp16 engine, profile " + ", ".join(f"{p.name} {p.min}..{p.max}" for p in profile))
        plan = build_engine(export_dir / spec["file"], profile, timing_cache=timing_cache)
        diffs = check_against_ort(plan, export_dir / spec["file"], example_inputs(spec["inputs"], profile))
        write_bytes_atomic(export_dir / f"{name}.plan", plan)
        report[name] = {"max_abs_diff": diffs, "bytes": len(plan)}
        log(f"{name}: ok, max |trt - ort| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export_dir", type=Path, required=True, help="a folder written by `python -m export`")
    parser.add_argument("--models", default=",".join(ENGINE_MODELS),
                        help="comma-separated models to build (default: all compute models)")
    parser.add_argument("--rows_per_request", type=int, default=32,
                        help="the batch size to optimise for (ssa_engine's rows per request; default %(default)s)")
    parser.add_argument("--timing_cache", type=Path, default=None,
                        help="timing cache file, read and updated (default <export_dir>/tensorrt.cache)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(ENGINE_MODELS))
    if unknown:
        print(f"error: no engine for {unknown}; models are {', '.join(ENGINE_MODELS)}", file=sys.stderr)
        return 2
    try:
        report = build_all(args.export_dir, models, args.rows_per_request,
                           timing_cache=args.timing_cache or args.export_dir / "tensorrt.cache")
    except (TensorRTUnavailable, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.export_dir / "tensorrt.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(report)} engines written to {args.export_dir} (checks in tensorrt.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
