"""The exported models in this process with ONNX Runtime, tensors in and out by DLPack.

`run_bound` binds DLPack tensors (torch, Triton's) as a session's inputs in place and leaves its
outputs where ONNX Runtime wrote them (CPU, or CUDA with onnxruntime-gpu), with no copy through
NumPy; `run_session` does the same for torch tensors. This module imports torch only where torch
tensors are asked for, so the Triton `onnx_runtime` models start without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ssa.graph_models import GraphModels, TensorFn
    from ssa.preprocess import Processors


def execution_providers(provider: str = "cpu", device_id: int = 0) -> list:
    """ONNX Runtime's providers for "cpu" or "cuda" (on GPU `device_id`: without it the CUDA
    provider takes GPU 0, whichever GPU the instance and its tensors are on)."""
    if provider == "cuda":
        return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    if provider != "cpu":
        raise ValueError(f"unknown execution provider {provider!r} (cpu or cuda)")
    return ["CPUExecutionProvider"]


def ort_session(path: str | Path, threads: int = 2, provider: str = "cpu", device_id: int = 0):
    """An ONNX Runtime session with full graph optimisation and `threads` intra-op threads, on the
    CPU or (provider "cuda", onnxruntime-gpu installed) on GPU `device_id`.

    The CPU memory arena is off: with it, every session keeps the peak of its largest batch for
    good (gigabytes for OneFormer Swin-L or 32 BLIP rows), and ten sessions in one server ran a
    24 GiB machine out of memory on 150-mask images.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = execution_providers(provider, device_id)
    if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"{path}: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)")
    return ort.InferenceSession(str(path), options, providers=providers)


def run_bound(session, inputs: dict, device: tuple[str, int] = ("cpu", 0)) -> dict:
    """Run `session` with I/O binding on named OrtValues (or objects ONNX Runtime can take by
    DLPack); named output OrtValues, left on `device` (type, index) where ONNX Runtime wrote them.
    The objects behind the inputs must live until this returns."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in inputs.items():
        binding.bind_ortvalue_input(name, value if isinstance(value, ort.OrtValue) else ort.OrtValue.from_dlpack(value))
    names = [o.name for o in session.get_outputs()]
    for name in names:
        binding.bind_output(name, *device)
    session.run_with_iobinding(binding)
    return dict(zip(names, binding.get_outputs()))


def run_session(session, inputs: dict[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """Run `session` on named tensors; named output tensors on the inputs' device, shared with
    ONNX Runtime by DLPack (no copy either way)."""
    import torch

    from ssa import device as devices
    from ssa.device import as_ortvalue, from_dlpack

    held = {name: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.contiguous()
            for name, v in inputs.items()}  # the bound memory must outlive the run
    device = next(iter(held.values())).device if held else torch.device("cpu")
    devices.handover(device)  # torch's queued work on the inputs (and on freed outputs) done first
    outputs = run_bound(session, {name: as_ortvalue(t) for name, t in held.items()}, (device.type, device.index or 0))
    return {name: from_dlpack(value) for name, value in outputs.items()}


def session_function(session) -> TensorFn:
    return lambda inputs: run_session(session, inputs)


def onnx_models(export_dir: str | Path, processors: Processors, threads: int = 2,
                device: str | torch.device = "cpu") -> GraphModels:
    """`ssa.engine.TensorModels` over the ONNX files of an export folder (manifest.json), on the CPU
    or, with onnxruntime-gpu, on a CUDA device."""
    import torch

    from ssa.graph_models import GraphModels
    from ssa.preprocess import check_text_graphs

    export_dir, device = Path(export_dir), torch.device(device)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    check_text_graphs(manifest, export_dir)
    provider = "cuda" if device.type == "cuda" else "cpu"
    fns = {name: session_function(ort_session(export_dir / m["file"], threads, provider, device.index or 0))
           for name, m in manifest["models"].items() if not name.startswith("sam_")}
    return GraphModels(fns, manifest["metadata"], processors, device)


def onnx_sam(export_dir: str | Path, threads: int = 2, device: str | torch.device = "cpu"):
    """`ssa.sam.SamModels` over the export folder's SAM encoder and decoder."""
    import torch

    from ssa.sam_models import GraphSam

    export_dir, device = Path(export_dir), torch.device(device)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    provider = "cuda" if device.type == "cuda" else "cpu"
    missing = [n for n in ("sam_encoder", "sam_decoder") if n not in manifest["models"]]
    if missing:
        raise FileNotFoundError(f"{export_dir}: no export of {missing}; run `python -m export` first")
    fns = {n: session_function(ort_session(export_dir / manifest["models"][n]["file"], threads, provider,
                                           device.index or 0)) for n in ("sam_encoder", "sam_decoder")}
    return GraphSam(fns, device)
