"""Write a Triton model repository for one profile and one target from the exported ONNX files.

Targets share tensor names, shapes and types; only how each compute model runs differs:
- cpu: every ONNX model is a Python model (the embedded tritonserver has only the Python backend)
  running OpenVINO (`backend="openvino"`, the default: bf16 on CPUs with bf16 matrix units where
  `precision` asks for it) or ONNX Runtime (`backend="onnxruntime"`, fp32), instances on the CPU,
  threads set for the machine. `backend="openvino_native"` writes the compute models for Triton's
  own `openvino` backend instead (NGC CPU images have it; the embedded server does not).
- gpu: the ONNX models run natively on `onnxruntime_onnx` with the TensorRT accelerator (fp16), or
  as `tensorrt_plan` where `model.plan` engines were built; instances on GPUs.
Both: `blip_caption` (the decoding loop with its key/value cache) and `ssa_engine` (BLS) are
Python models over the `ssa` package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ssa import __version__
from ssa.limits import parse_limit
from ssa.openvino_models import CAPTION_GRAPHS, one_precision
from ssa.params import EngineParams, SamParams
from ssa.preprocess import check_text_graphs

MODELS_SRC = Path(__file__).parent / "models"
TARGETS = ("cpu", "gpu")
# compute models served from one ONNX file each (the BLIP text graphs belong to blip_caption)
COMPUTE = ("oneformer_coco", "oneformer_ade20k", "blip_vision", "clip_image", "clip_text",
           "clipseg_visual", "clipseg_text", "clipseg_decoder")
# SAM ("SSA + SAM"), served when the export has it: one image per encoder call, every point prompt
# of an image in few decoder calls (no Triton batch axis: the prompt axis is the decoder's own)
SAM_COMPUTE = ("sam_encoder", "sam_decoder")
MAX_BATCH = {"oneformer_coco": 2, "oneformer_ade20k": 2, "sam_encoder": 0, "sam_decoder": 0}
# points per sam_decoder request from sam_masks: on a GPU a whole 32 x 32 grid at once (the lever);
# on the CPU 64 (what segment-anything decodes at a time; 50 MB of mask logits per request)
SAM_POINTS_PER_REQUEST = {"cpu": 64, "gpu": 1024}
DEFAULT_MAX_BATCH = 32
# rows per sub-model request from ssa_engine: on CPU, batches beyond 8 crops gain nothing and cost
# gigabytes (CLIPSeg's ViT-B/16 at 512 px holds 32 x 12 x 1025^2 attention weights per layer)
ROWS_PER_REQUEST = {"cpu": 8, "gpu": DEFAULT_MAX_BATCH}
# rows per blip_caption request: its max_batch_size everywhere. Each token's step reads the decoder's
# weights once for all rows (on the bench profile at 8 rows 4.0 ms a row and token, at 32 rows 2.8),
# and the loop's cache (42 MB a row in f32, half in bf16) is within blip_caption's stated bound
CAPTION_ROWS_PER_REQUEST = {"cpu": DEFAULT_MAX_BATCH, "gpu": DEFAULT_MAX_BATCH}
ENGINE_MAX_BATCH = 8
# ssa_engine instances (0 = this default): on a GPU two, so one image's host work (decoding, RLEs,
# spaCy, tokenizing) runs while the other's models run; on the CPU one, the cores are already busy
ENGINE_INSTANCES = {"cpu": 1, "gpu": 2}
# overlap in ssa_engine: the image stage's sub-requests in flight together and two images of a
# request batch interleaved, so one image's host work runs while another's models run. On by
# default on a GPU; off on the CPU, where each model already uses every core (measured: slower)
OVERLAP = {"cpu": False, "gpu": True}
# ssa_engine's request limits (ssa.limits.ServerLimits): "auto" derives each from the instance's memory
LIMIT_KEYS = ("max_masks", "max_image_pixels", "memory_budget_mb")
# how the cpu target runs its compute models; the precision each graph runs in (ssa.openvino_models)
BACKENDS = ("openvino", "onnxruntime", "openvino_native")
# graphs the openvino backends leave to ONNX Runtime: OpenVINO's f32 misses the export tolerance on
# SAM's point decoder (mask logits 2e-4 of their range off PyTorch, twice the tolerance; bf16: 0.77
# of it), whose outputs are thresholded at 0 and +-1; its FLOPs are under 1% of SAM's per image
ORT_GRAPHS = ("sam_decoder",)
# bf16 for the graphs that carry the FLOPs (OneFormer, BLIP, CLIP's and CLIPSeg's image towers, SAM's
# encoder); fp32 for the text encoders and CLIPSeg's decoder (under 5% of the FLOPs): in bf16 a
# row's result depends on how many rows share its call, and a name's cached embedding on which
# names were encoded with it; on the bench profile that moved CLIPSeg votes clear of a near-tie
# (4 of 24 through Triton). ORT_GRAPHS run fp32 whatever the default says.
# CLIPSeg's reductions (768 -> reduce_dim) are the last layers of clipseg_visual, so they run in the
# tower's precision, not the decoder's.
BF16 = "bf16,clip_text=fp32,clipseg_text=fp32,clipseg_decoder=fp32"
# what `--precision bf16` means (an explicit per-graph spec is taken as written)
PRESETS = {"bf16": BF16}
# the cpu target's default: fp32 (labels identical to the reference's); bf16 is a choice until it
# is shown to keep every clear decision through Triton on real sizes (README, "Backends and precision")
DEFAULT_PRECISION = "fp32"
TRITON_TYPE = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "STRING": "TYPE_STRING"}


def _dims(dims: list) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims) + " ]"


def _tensor(t: dict, optional: bool = False) -> str:
    dims = t["dims"][1:] if t["dims"] and t["dims"][0] == "batch" else t["dims"]
    extra = "\n    optional: true" if optional else ""
    return (f"  {{\n    name: \"{t['name']}\"\n    data_type: {TRITON_TYPE[t['dtype']]}\n"
            f"    dims: {_dims(dims)}{extra}\n  }}")


def _params(params: dict[str, str]) -> str:
    return "".join(f"parameters {{\n  key: \"{k}\"\n  value: {{ string_value: \"{v}\" }}\n}}\n"
                   for k, v in params.items())


def model_config(name: str, inputs: list[dict], outputs: list[dict], max_batch: int, backend: str,
                 instance_kind: str, instances: int = 1, params: dict[str, str] | None = None,
                 optional: tuple[str, ...] = (), extra: str = "") -> str:
    """The text of one config.pbtxt."""
    lines = [f'name: "{name}"', backend, f"max_batch_size: {max_batch}"]
    if max_batch > 0:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}")
    lines.append("input [\n" + ",\n".join(_tensor(t, t["name"] in optional) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]")
    lines.append(f"instance_group [\n  {{\n    kind: {instance_kind}\n    count: {instances}\n  }}\n]")
    text = "\n".join(lines) + "\n" + _params(params or {}) + extra
    return text


TENSORRT_FP16 = """optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "4294967296" }
        parameters { key: "trt_engine_cache_enable" value: "true" }
      }
    ]
  }
}
"""

ENGINE_INPUTS = [{"name": "image", "dtype": "STRING", "dims": ["batch", 1]},
                 {"name": "annotations", "dtype": "STRING", "dims": ["batch", 1]},
                 {"name": "params", "dtype": "STRING", "dims": ["batch", 1]}]
ENGINE_OUTPUTS = [{"name": "class_name", "dtype": "STRING", "dims": ["batch", "masks"]},
                  {"name": "class_proposals", "dtype": "STRING", "dims": ["batch", "masks", "k"]},
                  {"name": "proposal_scores", "dtype": "FP32", "dims": ["batch", "masks", "k"]},
                  {"name": "vote_share", "dtype": "FP32", "dims": ["batch", "masks"]},
                  {"name": "caption", "dtype": "STRING", "dims": ["batch", "masks"]},
                  # what ran the models (target, backend, each graph's precision), JSON
                  {"name": "runtime", "dtype": "STRING", "dims": ["batch", 1]}]


SAM_INPUTS = [{"name": "image", "dtype": "STRING", "dims": [1]}, {"name": "params", "dtype": "STRING", "dims": [1]}]
SAM_OUTPUTS = [{"name": "annotations", "dtype": "STRING", "dims": [1]}]


# ssa_health: the probe that tells whether every Python model's stub is alive (and reloads dead ones)
HEALTH_INPUTS = [{"name": "probe", "dtype": "INT32", "dims": [1]}]
HEALTH_OUTPUTS = [{"name": "status", "dtype": "STRING", "dims": [1]}]


def precision_plan(backend: str, precision: str | None, names: list[str]) -> dict[str, str]:
    """Per-graph precision of the cpu target from a spec ("bf16", "fp32", "bf16,oneformer_coco=fp32";
    None: DEFAULT_PRECISION on OpenVINO, fp32 on ONNX Runtime); a clear error for what a backend
    cannot run."""
    from ssa.openvino_models import parse_precisions

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    if precision is None:  # the native backend takes bf16 only (below)
        precision = {"onnxruntime": "fp32", "openvino_native": "bf16"}.get(backend, DEFAULT_PRECISION)
    if backend == "openvino" and precision.strip() in PRESETS:  # its exceptions for the graphs there are
        precision = ",".join(p for p in PRESETS[precision.strip()].split(",") if p.partition("=")[0] in ("", *names)
                             or "=" not in p)
    plan = parse_precisions(precision, names)
    if backend == "onnxruntime" and set(plan.values()) != {"fp32"}:
        raise ValueError(f"precision {precision!r}: the onnxruntime backend runs fp32 only; use --backend openvino for bf16")
    asked = [n for n in ORT_GRAPHS if f"{n}=bf16" in precision.replace(" ", "")]
    if asked:
        raise ValueError(f"precision {precision!r}: {', '.join(asked)} runs on ONNX Runtime (fp32) in every cpu "
                         "backend (OpenVINO misses its export tolerance there)")
    plan.update({n: "fp32" for n in ORT_GRAPHS if n in plan})  # a default of bf16 means: where it runs
    if backend == "openvino_native" and "fp32" in {p for n, p in plan.items() if n not in ORT_GRAPHS}:
        fp32 = sorted(n for n, p in plan.items() if p == "fp32" and n not in ORT_GRAPHS)
        raise ValueError(f"precision {precision!r}: Triton's native openvino backend has no setting that forces f32 "
                         f"(only HINT_BF16=YES; on a CPU with bf16 units OpenVINO's own default is bf16), so "
                         f"{', '.join(fp32)} cannot be promised fp32 there; use --backend openvino, or bf16 for every graph")
    return plan


NATIVE_OPENVINO = 'backend: "openvino"\ndefault_model_filename: "model.onnx"'


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def runtime(target: str, backend: str, plan: dict[str, str] | None, export_dir: Path, graphs: list[str]) -> dict:
    """What runs the graphs, as asked (ssa_engine resolves it on its machine and records it in the outputs)."""
    if target == "gpu":
        engines = sorted(n for n in graphs if (export_dir / f"{n}.plan").exists())
        return {"target": "gpu", "backend": "tensorrt", "precision": "fp16",
                "graphs": {n: ("tensorrt_plan" if n in engines else "onnxruntime_onnx+tensorrt") for n in COMPUTE}}
    on_ort = sorted(n for n in ORT_GRAPHS if n in graphs) if backend != "onnxruntime" else []
    return {"target": "cpu", "backend": backend, "precision": plan, **({"onnxruntime": on_ort} if on_ort else {})}


def generate_repository(export_dir: str | Path, profile_dir: str | Path, out_dir: str | Path, target: str = "cpu",
                        threads: int = 2, engine_instances: int = 0, params: EngineParams = EngineParams(),
                        overlap: bool | None = None, sam_params: SamParams = SamParams(),
                        include_sam: bool = True, limits: dict[str, str] | None = None, backend: str = "openvino",
                        precision: str | None = None) -> Path:
    """Write the repository to `out_dir` (replacing it); returns out_dir. engine_instances 0 and
    overlap None take the target's defaults (ENGINE_INSTANCES, OVERLAP). SAM's models are served
    when the export has them, unless `include_sam` is False (a labelling-only server: SAM ViT-H
    alone holds 2.5 GB). limits: ssa_engine's request limits, "max_masks", "max_image_pixels" and
    "memory_budget_mb", each a number or "auto" (the default: derived at start from the instance's
    memory and the engine's memory bound, `ssa.limits`). backend and precision: how the cpu target
    runs its graphs (BACKENDS, `precision_plan`); the gpu target runs TensorRT fp16."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; targets are {', '.join(TARGETS)}")
    export_dir, profile_dir, out_dir = Path(export_dir), Path(profile_dir), Path(out_dir)
    for key, value in (limits or {}).items():
        if key not in LIMIT_KEYS:
            raise ValueError(f"unknown limit {key!r}; limits are {', '.join(LIMIT_KEYS)}")
        parse_limit(key, value, 0)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    missing = [m for m in (*COMPUTE, "blip_text_prefill", "blip_text_step") if m not in manifest["models"]]
    if missing:
        raise FileNotFoundError(f"{export_dir}: no export of {missing}; run `python -m export` first")
    check_text_graphs(manifest, export_dir)
    sam = include_sam and all(m in manifest["models"] for m in SAM_COMPUTE)
    graphs = [*COMPUTE, "blip_text_prefill", "blip_text_step", *(SAM_COMPUTE if sam else ())]
    plan = precision_plan(backend, precision, graphs) if target == "cpu" else None
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    overlap = OVERLAP[target] if overlap is None else overlap
    thread_params = {"intra_op_threads": str(threads)}
    # the Python models that take device tensors must not have them copied to the host first
    device_tensors = {"FORCE_CPU_ONLY_INPUT_TENSORS": "no"} if target == "gpu" else {}
    cpu = "KIND_CPU"
    gpu = "KIND_GPU" if target == "gpu" else cpu

    for name in COMPUTE + (SAM_COMPUTE if sam else ()):
        spec = manifest["models"][name]
        version = out_dir / name / "1"
        engine = export_dir / f"{name}.plan"
        if spec.get("data_file") and not (target == "gpu" and engine.exists()):  # weights beside the graph
            _link_or_copy(export_dir / spec["data_file"], version / spec["data_file"])
        if target == "gpu" and engine.exists():
            kind, extra = 'platform: "tensorrt_plan"', ""
            _link_or_copy(engine, version / "model.plan")
        elif target == "gpu":
            kind, extra = 'platform: "onnxruntime_onnx"', TENSORRT_FP16
            _link_or_copy(export_dir / spec["file"], version / "model.onnx")
        elif backend == "openvino_native":
            kind, extra = ('platform: "onnxruntime_onnx"' if name in ORT_GRAPHS else NATIVE_OPENVINO), ""
            _link_or_copy(export_dir / spec["file"], version / "model.onnx")
        else:
            kind, extra = 'backend: "python"', ""
            _link_or_copy(export_dir / spec["file"], version / "model.onnx")
            ov = backend == "openvino" and name not in ORT_GRAPHS
            shutil.copy2(MODELS_SRC / ("openvino" if ov else "onnx_runtime") / "model.py", version / "model.py")
        if target == "gpu":
            model_params = None
        elif backend == "openvino_native" and name in ORT_GRAPHS:
            model_params = {}
        elif backend == "openvino_native":  # the backend's own keys (openvino_backend README)
            model_params = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY",
                            "HINT_BF16": "YES"}
        else:
            ov = backend == "openvino" and name not in ORT_GRAPHS
            model_params = {**thread_params, "precision": plan[name]} if ov else thread_params
        (out_dir / name / "config.pbtxt").write_text(model_config(
            name, spec["inputs"], spec["outputs"], MAX_BATCH.get(name, DEFAULT_MAX_BATCH), kind, gpu,
            params=model_params, extra=extra))

    meta = manifest["metadata"]
    prefill = manifest["models"]["blip_text_prefill"]
    embeds = next(t for t in prefill["inputs"] if t["name"] == "image_embeds")
    version = out_dir / "blip_caption" / "1"
    for part in ("blip_text_prefill", "blip_text_step"):
        _link_or_copy(export_dir / manifest["models"][part]["file"], version / f"{part}.onnx")
    shutil.copy2(MODELS_SRC / "blip_caption" / "model.py", version / "model.py")
    (out_dir / "blip_caption" / "config.pbtxt").write_text(model_config(
        "blip_caption", [embeds, {"name": "max_length", "dtype": "INT32", "dims": ["batch", 1]}],
        [{"name": "token_ids", "dtype": "INT64", "dims": ["batch", "tokens"]}], DEFAULT_MAX_BATCH,
        'backend: "python"', gpu, optional=("max_length",),
        params={**thread_params, **device_tensors, **{k: str(v) for k, v in meta["blip"].items()},
                "max_length": str(params.caption_max_length),
                "execution_provider": "cuda" if target == "gpu" else "cpu",
                **({"runtime": "openvino", "precision": one_precision(plan, CAPTION_GRAPHS)}
                   if target == "cpu" and backend != "onnxruntime" else {"runtime": "onnxruntime"})}))

    version = out_dir / "ssa_engine" / "1"
    version.mkdir(parents=True)
    shutil.copy2(MODELS_SRC / "ssa_engine" / "model.py", version / "model.py")
    for role_dir in sorted(p for p in profile_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in role_dir.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt")):
                _link_or_copy(f, version / "processors" / role_dir.name / f.name)
    outputs = {name: [t["name"] for t in manifest["models"][name]["outputs"]] for name in COMPUTE}
    outputs["blip_caption"] = ["token_ids"]
    (out_dir / "ssa_engine" / "config.pbtxt").write_text(model_config(
        "ssa_engine", ENGINE_INPUTS, ENGINE_OUTPUTS, ENGINE_MAX_BATCH, 'backend: "python"', gpu,
        instances=engine_instances or ENGINE_INSTANCES[target], optional=("params",),
        params={"clip_logit_scale": repr(meta["clip_logit_scale"]),
                "sub_model_outputs": json.dumps(outputs).replace('"', '\\"'),
                "device": "cuda" if target == "gpu" else "cpu", **device_tensors,
                "images_in_progress": "2" if overlap else "1",
                "concurrent_image_stage": "1" if overlap else "0",
                "sub_max_batch_size": str(ROWS_PER_REQUEST[target]),
                "caption_max_batch_size": str(CAPTION_ROWS_PER_REQUEST[target]),
                **{key: str((limits or {}).get(key, "auto")) for key in LIMIT_KEYS},
                "engine_params": json.dumps(params.to_dict()).replace('"', '\\"'),
                "profile": manifest["profile"].get("profile", ""),
                "profile_json": json.dumps(manifest["profile"], sort_keys=True).replace('"', '\\"'),
                "runtime_json": json.dumps(runtime(target, backend, plan, export_dir, graphs)).replace('"', '\\"'),
                "package_version": __version__}))
    if sam:
        version = out_dir / "sam_masks" / "1"
        version.mkdir(parents=True)
        shutil.copy2(MODELS_SRC / "sam_masks" / "model.py", version / "model.py")
        (out_dir / "sam_masks" / "config.pbtxt").write_text(model_config(
            "sam_masks", SAM_INPUTS, SAM_OUTPUTS, 0, 'backend: "python"', gpu, optional=("params",),
            params={"device": "cuda" if target == "gpu" else "cpu", **device_tensors,
                    "points_per_request": str(SAM_POINTS_PER_REQUEST[target]),
                    "sam_params": json.dumps(sam_params.to_dict()).replace('"', '\\"')}))
    version = out_dir / "ssa_health" / "1"
    version.mkdir(parents=True)
    shutil.copy2(MODELS_SRC / "ssa_health" / "model.py", version / "model.py")
    (out_dir / "ssa_health" / "config.pbtxt").write_text(model_config(
        "ssa_health", HEALTH_INPUTS, HEALTH_OUTPUTS, 0, 'backend: "python"', "KIND_CPU", optional=("probe",),
        params={"heal": "1"}))
    (out_dir / "manifest.json").write_text(json.dumps({"target": target, "export": manifest}, indent=2) + "\n")
    return out_dir
