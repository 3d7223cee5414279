"""Export a profile's models to ONNX and check each file against the PyTorch module it came from."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from export.specs import SPECS, ModelSpec
from ssa.graph_models import model_metadata
from ssa.profiles import load_role_model

MANIFEST = "manifest.json"
BATCH_EXAMPLE, BATCH_CHECK = 2, 3  # export with batch >= 2; check at another batch size


class ExportCheckError(RuntimeError):
    """An exported model disagrees with PyTorch beyond its stated tolerance."""


@contextlib.contextmanager
def quiet():
    """No tracer or deprecation warnings and no weight-loading bars (the export's own one line per
    model is what a user reads; `python -m export --verbose` shows the rest)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def summary_line(name: str, size_bytes: int, diffs: dict[str, dict[str, float]], seconds: float) -> str:
    """One line per exported model: name, size, the largest difference against PyTorch over its
    outputs and the tolerance it was held to."""
    worst = max(diffs.items(), key=lambda kv: kv[1]["max_abs_diff"] / kv[1]["bound"] if kv[1]["bound"] else 0)
    output, d = worst
    return (f"{name:<18} {size_bytes / 1e6:8.1f} MB   max |ONNX - PyTorch| {d['max_abs_diff']:.1e} "
            f"<= {d['bound']:.1e} ({output})   {seconds:.1f}s")


def load_role(profile_dir: Path, role: str) -> torch.nn.Module:
    return load_role_model(profile_dir / role, role)


def _dynamic_axes(spec: ModelSpec, model) -> dict[str, dict[int, str]]:
    axes = {}
    for t in spec.inputs(model) + spec.outputs(model):
        named = {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
        if named:
            axes[t.name] = named
    return axes


def export_model(spec: ModelSpec, model, path: Path) -> int:
    """Write `spec`'s wrapper of `model` to `path` (one self-contained ONNX file); returns how many
    attention scales were moved onto the queries (`spec.scale_queries`)."""
    from export.graph_passes import scale_queries_first_file
    from export.oneformer_patches import patch_oneformer_for_dynamic_hw

    module = spec.wrapper(model).eval()
    args = spec.example(model, BATCH_EXAMPLE, 0)
    patches = patch_oneformer_for_dynamic_hw() if spec.patch_oneformer else contextlib.nullcontext()
    with patches, torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=[t.name for t in spec.inputs(model)],
                          output_names=[t.name for t in spec.outputs(model)], dynamic_axes=_dynamic_axes(spec, model),
                          dynamo=False, opset_version=17)
    # a head width whose square root is not a power of two keeps its scales where they are
    moved = scale_queries_first_file(path) if spec.scale_queries else 0
    if spec.external_data:
        _to_one_data_file(path)
    return moved


def _to_one_data_file(path: Path) -> None:
    """Rewrite `path` with every weight in one `<name>.data` file beside it (a model over 2 GB is
    written by the exporter as one file per weight; this form is what ONNX Runtime, Triton and
    TensorRT read)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent
    stale = {folder / e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    load_external_data_for_model(model, str(folder))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    from ssa.sa1b import file_mode

    os.chmod(data, file_mode())  # onnx writes it 0600: unreadable to a server running as another user
    for f in stale:
        if f != data:
            f.unlink(missing_ok=True)


def check_model(spec: ModelSpec, model, path: Path, threads: int = 2) -> dict[str, dict[str, float]]:
    """Run the ONNX file and the unpatched PyTorch wrapper on fresh inputs (new batch size, new
    sizes); return per output {"max_abs_diff", "bound"}; raise ExportCheckError beyond the bound."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    module = spec.wrapper(model).eval()
    diffs = {}
    for variant in (1, 2) if spec.patch_oneformer else (1,):
        args = spec.example(model, BATCH_CHECK, variant)
        with torch.no_grad():
            ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        feed = {t.name: a.numpy() for t, a in zip(spec.inputs(model), args)}
        got = session.run(None, feed)
        for t, r, g in zip(spec.outputs(model), ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                raise ExportCheckError(f"{spec.name}.{t.name}: ONNX shape {g.shape} != PyTorch shape {r.shape}")
            diff = float(np.abs(r - g).max()) if r.size else 0.0
            bound = spec.atol + spec.rtol * float(np.abs(r).max() if r.size else 0.0)
            if not diff <= bound:
                raise ExportCheckError(f"{spec.name}.{t.name}: max |ONNX - PyTorch| = {diff:.3e} > {bound:.3e}")
            worst = diffs.setdefault(t.name, {"max_abs_diff": 0.0, "bound": bound})
            if diff >= worst["max_abs_diff"]:
                worst.update(max_abs_diff=diff, bound=bound)
    return diffs


def export_profile(profile_dir: str | Path, out_dir: str | Path, names: list[str] | None = None,
                   log=print) -> dict:
    """Export (and check) every model of `names` (default: all) to `out_dir`; write manifest.json."""
    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if names is None:  # every model of the profile (one built before SAM was a role has none)
        names = [n for n, spec in SPECS.items() if (profile_dir / spec.role / "config.json").is_file()]
        for n in sorted(set(SPECS) - set(names)):
            log(f"{n}: the profile has no {SPECS[n].role} model (`ssa models --roles {SPECS[n].role}`), skipped")
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; models are {', '.join(SPECS)}")
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    manifest["profile"] = json.loads((profile_dir / "profile.json").read_text())
    models = {}
    for name in names:
        spec = SPECS[name]
        if spec.role not in models:
            models[spec.role] = load_role(profile_dir, spec.role)
        model = models[spec.role]
        path = out_dir / f"{name}.onnx"
        start = time.perf_counter()
        moved = export_model(spec, model, path)
        exported = time.perf_counter() - start
        diffs = check_model(spec, model, path)
        size = path.stat().st_size + (path.with_name(path.name + ".data").stat().st_size if spec.external_data else 0)
        log(summary_line(name, size, diffs, exported))
        manifest["models"][name] = {
            "file": path.name,
            "data_file": path.name + ".data" if spec.external_data else None,
            "inputs": [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in spec.inputs(model)],
            "outputs": [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in spec.outputs(model)],
            "check": {"outputs": diffs, "atol": spec.atol, "rtol": spec.rtol},
        }
        if spec.scale_queries:
            manifest["models"][name]["scales_on_queries"] = moved
    manifest.setdefault("metadata", {}).update(model_metadata(models))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
