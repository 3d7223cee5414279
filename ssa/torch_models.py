"""The engine's models in PyTorch on any device: the export wrappers (`ssa.wrappers`, the very
modules `export/` turns into ONNX files) run in fp32 or fp16. This is the in-process GPU path: it
needs PyTorch and transformers only (no Triton, no ONNX Runtime, no TensorRT), so a bare GPU
machine can measure the engine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssa.graph_models import GraphModels, TensorFn, model_metadata
from ssa.preprocess import Processors

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def wrapper_function(module: torch.nn.Module, inputs: list[str], outputs: list[str], dtype: torch.dtype) -> TensorFn:
    """A tensor function over one wrapper module: floating inputs cast to `dtype`, outputs by name
    (left in `dtype`: the engine casts what it reads, the BLIP cache stays in it from step to step)."""

    def run(feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [feed[n].to(dtype) if feed[n].is_floating_point() else feed[n] for n in inputs]
        with torch.inference_mode():
            out = module(*args)
        return dict(zip(outputs, out if isinstance(out, tuple) else (out,)))

    return run


def torch_models(profile_dir: str | Path, processors: Processors, device: str | torch.device = "cpu",
                 precision: str = "fp32") -> GraphModels:
    """`ssa.engine.TensorModels` with every exported graph run by its PyTorch wrapper on `device`."""
    from export.specs import SPECS
    from ssa.profiles import SAM, load_role_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device, dtype = torch.device(device), PRECISIONS[precision]
    roles, fns = {}, {}
    for name, spec in SPECS.items():
        if spec.role == SAM:  # the mask generator is not a labelling model (ssa.sam_models)
            continue
        if spec.role not in roles:
            roles[spec.role] = load_role_model(Path(profile_dir) / spec.role, spec.role).eval()
        model = roles[spec.role]
        module = spec.wrapper(model).eval().to(device=device, dtype=dtype)
        fns[name] = wrapper_function(module, [t.name for t in spec.inputs(model)],
                                     [t.name for t in spec.outputs(model)], dtype)
    return GraphModels(fns, model_metadata(roles), processors, device)


def torch_sam(profile_dir: str | Path, device: str | torch.device = "cpu", precision: str = "fp32"):
    """`ssa.sam.SamModels` with SAM's exported graphs (encoder, point decoder) run by their PyTorch
    wrappers on `device`: the engine's SAM path without Triton (outputs cast back to fp32)."""
    from export.specs import SPECS
    from ssa.profiles import SAM, load_role_model
    from ssa.sam_models import GraphSam

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device, dtype = torch.device(device), PRECISIONS[precision]
    model = load_role_model(Path(profile_dir) / SAM, SAM).eval()
    fns = {}
    for name in ("sam_encoder", "sam_decoder"):
        spec = SPECS[name]
        module = spec.wrapper(model).eval().to(device=device, dtype=dtype)
        fn = wrapper_function(module, [t.name for t in spec.inputs(model)], [t.name for t in spec.outputs(model)], dtype)
        fns[name] = lambda feed, fn=fn: {k: v.float() for k, v in fn(feed).items()}
    return GraphSam(fns, device)
