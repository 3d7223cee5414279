"""The exported models in this process with OpenVINO Runtime: the cpu target's default backend.

OpenVINO reads the very `.onnx` files of the export (nothing is converted ahead of time) and, on a
CPU with bf16 matrix units (Intel AMX, AVX512-BF16), runs them in bf16 when asked: several times
faster than fp32 on the same cores. Precision is a setting of the deployment (`fp32` or `bf16`,
per graph); where bf16 is asked and the CPU has no bf16 units, the graph runs in f32 and
`resolve_precision` says so (never a silent change): what ran is recorded in every output.

Inputs are handed over in place (`share_inputs`): the caption step's inputs are the whole
cross-attention cache (346 MB for BLIP-base at 8 rows), which a copy per token would move again
and again. Outputs are copied out of the request (a few MB: logits, embeddings, the new
self-attention rows), so a result never changes under its reader when the graph runs again.
Compiled graphs are cached on disk (`cache_dir`): a restarted server does not compile again.

This module imports neither torch nor ONNX Runtime at import time (the Triton `openvino` Python
models start without torch).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ssa.graph_models import GraphModels, TensorFn
    from ssa.preprocess import Processors

PRECISIONS = ("fp32", "bf16")
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
log = logging.getLogger(__name__)


@functools.cache
def core():
    import openvino as ov

    return ov.Core()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units OpenVINO uses (AMX-BF16 or AVX512-BF16)."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(asked: str) -> tuple[str, str | None]:
    """(the precision that runs, a note when it differs from `asked`)."""
    if asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    if asked == "bf16" and not cpu_has_bf16():
        return "fp32", "bf16 asked, but this CPU has no bf16 units (AMX-BF16 / AVX512-BF16): runs fp32"
    return asked, None


def parse_precisions(text: str, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Per-graph precisions from "bf16" (every graph) or "bf16,oneformer_coco=fp32" (a default,
    then graphs that differ); a clear error for an unknown precision or graph."""
    default, per_graph = None, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.rpartition("=")
        if value not in PRECISIONS:
            raise ValueError(f"precision {value!r} in {text!r}: precisions are {', '.join(PRECISIONS)}")
        if not name:
            default = value
        elif name not in names:
            raise ValueError(f"{name!r} in {text!r} is not a graph of this export ({', '.join(names)})")
        else:
            per_graph[name] = value
    if default is None:
        raise ValueError(f"{text!r}: give a precision for every graph first, e.g. 'bf16' or 'bf16,oneformer_coco=fp32'")
    return {name: per_graph.get(name, default) for name in names}


def compile_graph(path: str | Path, threads: int = 2, precision: str = "fp32", cache_dir: str | Path | None = None):
    """An OpenVINO compiled model of one ONNX file on the CPU: `threads` threads, one stream
    (latency: one request at a time uses every thread), `precision` as resolved for this CPU,
    compiled blobs cached in `cache_dir` (None: no cache)."""
    run, note = resolve_precision(precision)
    if note:
        log.warning("%s: %s", path, note)
    config = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": OV_PRECISION[run]}
    if cache_dir is not None:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        except OSError as exc:  # a read-only repository: compile every start, say so
            log.warning("%s: no compile cache (%s)", path, exc)
    return core().compile_model(str(path), "CPU", config)


def _port_name(port, names) -> str:
    """The ONNX name of an input or output: OpenVINO gives a port every name its tensor had in the
    graph (an input feeding a Cast also carries the Cast's output name), so the one the export
    declared (`names`) is taken, else the one that is not an internal node path."""
    have = port.get_names()
    for name in names:
        if name in have:
            return name
    return sorted(have, key=lambda n: (n.startswith("/"), n))[0]


class OpenVinoGraph:
    """One compiled graph as a function of named NumPy arrays -> named NumPy arrays (copies the
    caller owns). Calls are serialised (one infer request, reused)."""

    def __init__(self, path: str | Path, threads: int = 2, precision: str = "fp32", cache_dir: str | Path | None = None,
                 names: list[str] | tuple[str, ...] = ()):
        self.path = Path(path)
        self.compiled = compile_graph(path, threads, precision, cache_dir)
        self.precision = resolve_precision(precision)[0]
        self.request = self.compiled.create_infer_request()
        self.inputs = [_port_name(p, names) for p in self.compiled.inputs]
        self.outputs = [_port_name(p, names) for p in self.compiled.outputs]
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: inputs {missing} missing")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.inputs}
        with self._lock:
            result = self.request.infer(feed, share_inputs=True, share_outputs=False)
            return {name: result[port] for name, port in zip(self.outputs, self.compiled.outputs)}


def graph_function(graph: OpenVinoGraph) -> TensorFn:
    """A tensor function (`ssa.graph_models`) over a graph: CPU torch tensors in and out, shared
    with OpenVINO without a copy on the way in."""
    import torch

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = {n: t.detach().contiguous() for n, t in inputs.items()}
        if any(t.device.type != "cpu" for t in held.values()):
            raise ValueError(f"{graph.path.name}: OpenVINO runs on the CPU; got tensors on another device")
        out = graph({n: t.numpy() for n, t in held.items()})
        return {n: torch.from_numpy(a) for n, a in out.items()}

    return run


def _manifest(export_dir: Path) -> dict:
    return json.loads((export_dir / "manifest.json").read_text())


def _graph(export_dir: Path, spec: dict, threads: int, precision: str, cache_dir) -> OpenVinoGraph:
    names = [t["name"] for t in spec["inputs"] + spec["outputs"]]
    return OpenVinoGraph(export_dir / spec["file"], threads, precision, cache_dir, names)


def openvino_models(export_dir: str | Path, processors: Processors, threads: int = 2,
                    precision: str | dict[str, str] = "fp32", cache_dir: str | Path | None = None) -> GraphModels:
    """`ssa.engine.TensorModels` over the ONNX files of an export folder, run by OpenVINO on the
    CPU; `precision` for every graph or per graph name (missing names: fp32)."""
    import torch

    from ssa.graph_models import GraphModels

    export_dir = Path(export_dir)
    manifest = _manifest(export_dir)
    names = [n for n in manifest["models"] if not n.startswith("sam_")]
    per_graph = precision if isinstance(precision, dict) else dict.fromkeys(names, precision)
    fns = {n: graph_function(_graph(export_dir, manifest["models"][n], threads, per_graph.get(n, "fp32"), cache_dir))
           for n in names}
    return GraphModels(fns, manifest["metadata"], processors, torch.device("cpu"))


def openvino_sam(export_dir: str | Path, threads: int = 2, precision: str = "fp32", cache_dir: str | Path | None = None):
    """`ssa.sam.SamModels` over the export folder's SAM encoder and decoder, run by OpenVINO."""
    import torch

    from ssa.sam_models import GraphSam

    export_dir = Path(export_dir)
    manifest = _manifest(export_dir)
    missing = [n for n in ("sam_encoder", "sam_decoder") if n not in manifest["models"]]
    if missing:
        raise FileNotFoundError(f"{export_dir}: no export of {missing}; run `python -m export` first")
    fns = {n: graph_function(_graph(export_dir, manifest["models"][n], threads, precision, cache_dir))
           for n in ("sam_encoder", "sam_decoder")}
    return GraphSam(fns, torch.device("cpu"))
