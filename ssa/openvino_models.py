"""The exported models in this process with OpenVINO Runtime: the cpu target's default backend.

OpenVINO reads the very `.onnx` files of the export (nothing is converted ahead of time) and, on a
CPU with bf16 matrix units (Intel AMX, AVX512-BF16), runs them in bf16 when asked: several times
faster than fp32 on the same cores. Precision is a setting of the deployment (`fp32` or `bf16`,
per graph); where bf16 is asked and the CPU has no bf16 units, the graph runs in f32 and
`resolve_precision` says so (never a silent change): what ran is recorded in every output.

Inputs are handed over in place (`share_inputs`): the caption step's inputs are the whole
cross-attention cache (346 MB for BLIP-base at 8 rows in f32), which a copy per token would move
again and again. Outputs are copied out of the request (a few MB: logits, embeddings, the new
self-attention rows), so a result never changes under its reader when the graph runs again; the
one exception is asked for by name (`borrow`): the caption prefill's cross-attention cache, read
by every step of one decode and by nothing after it, is a view of the request's own output memory
(valid until the graph's next call; `ssa.graph_models.BlipCaptioner` holds a decode's lock over
it). Copying it out cost more than computing it: 1.36 GB per 32 rows in f32, written to freshly
mapped pages on every call (3.8 s against 0.64 s shared, bench profile, 2 cores).

Where the caption graphs run in bf16, that cache also crosses from the prefill graph to the step
graph as bf16 (`bf16_io`; the graphs compute in bf16 either way, so the numbers are the ones the
step would have rounded to): half the bytes each token reads (measured: a step at 8 rows 0.042 ->
0.032 s, prefill 0.64 -> 0.40 s at 32 rows). A bf16 tensor is an `np.uint16` array of its bits at
this module's NumPy boundary and a `torch.bfloat16` tensor at `graph_function`'s.
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
# the caption loop's two graphs: one precision, and its cache handed from one to the other
CAPTION_GRAPHS = ("blip_text_prefill", "blip_text_step")
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


def _with_bf16_io(path: str | Path, prefixes: tuple[str, ...]):
    """The ONNX file read as an OpenVINO model whose inputs and outputs named `prefixes*` are bf16
    at the boundary (the graph inside unchanged)."""
    from openvino import Type
    from openvino.preprocess import PrePostProcessor

    model = core().read_model(str(path))
    ppp = PrePostProcessor(model)
    for ports, side in ((model.inputs, ppp.input), (model.outputs, ppp.output)):
        for i, port in enumerate(ports):
            if any(n.startswith(prefixes) for n in port.get_names()):
                side(i).tensor().set_element_type(Type.bf16)
    return ppp.build()


def compile_graph(path: str | Path, threads: int = 2, precision: str = "fp32", cache_dir: str | Path | None = None,
                  bf16_io: tuple[str, ...] = ()):
    """An OpenVINO compiled model of one ONNX file on the CPU: `threads` threads, one stream
    (latency: one request at a time uses every thread), `precision` as resolved for this CPU,
    compiled blobs cached in `cache_dir` (None: no cache); where it runs in bf16, the inputs and
    outputs whose names start with one of `bf16_io` are bf16 tensors."""
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
    if run == "bf16" and bf16_io:
        return core().compile_model(_with_bf16_io(path, tuple(bf16_io)), "CPU", config)
    return core().compile_model(str(path), "CPU", config)


def bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 values -> their bf16 bits (np.uint16), rounded to nearest even."""
    u = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


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
    caller owns, but for the outputs named `borrow*`: views valid until the next call). Calls are
    serialised (one infer request, reused). `bf16_io`: name prefixes of inputs and outputs that are
    bf16 (np.uint16 bits) where the graph runs in bf16; a float32 array given to such an input is
    rounded to bf16."""

    def __init__(self, path: str | Path, threads: int = 2, precision: str = "fp32", cache_dir: str | Path | None = None,
                 names: list[str] | tuple[str, ...] = (), bf16_io: tuple[str, ...] = (), borrow: tuple[str, ...] = ()):
        from openvino import Type

        self.path = Path(path)
        self.compiled = compile_graph(path, threads, precision, cache_dir, bf16_io)
        self.precision = resolve_precision(precision)[0]
        self.request = self.compiled.create_infer_request()
        self.inputs = [_port_name(p, names) for p in self.compiled.inputs]
        self.outputs = [_port_name(p, names) for p in self.compiled.outputs]
        self.bf16 = {n for n, p in zip(self.inputs + self.outputs, [*self.compiled.inputs, *self.compiled.outputs])
                     if p.get_element_type() == Type.bf16}
        self.borrowed = {n for n in self.outputs if borrow and n.startswith(tuple(borrow))}
        self._lock = threading.Lock()

    def _feed(self, name: str, array: np.ndarray):
        if name not in self.bf16:
            return np.ascontiguousarray(array)
        from openvino import Tensor, Type

        bits = np.ascontiguousarray(array) if array.dtype == np.uint16 else bf16_bits(array)
        return Tensor(bits, list(bits.shape), Type.bf16)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: inputs {missing} missing")
        feed = {n: self._feed(n, inputs[n]) for n in self.inputs}
        with self._lock:
            result = self.request.infer(feed, share_inputs=True, share_outputs=bool(self.borrowed))
            out = {}
            for name, port in zip(self.outputs, self.compiled.outputs):
                value = result[port]
                if name in self.bf16:  # OpenVINO hands bf16 bits out typed float16
                    value = value.view(np.uint16)
                out[name] = value.copy() if self.borrowed and name not in self.borrowed else value
            return out


def graph_function(graph: OpenVinoGraph) -> TensorFn:
    """A tensor function (`ssa.graph_models`) over a graph: CPU torch tensors in and out, shared
    with OpenVINO without a copy on the way in."""
    import torch

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

    def to_torch(name: str, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if name in graph.bf16 else torch.from_numpy(a)

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = {n: t.detach().contiguous() for n, t in inputs.items()}
        if any(t.device.type != "cpu" for t in held.values()):
            raise ValueError(f"{graph.path.name}: OpenVINO runs on the CPU; got tensors on another device")
        out = graph({n: to_numpy(t) for n, t in held.items()})
        return {n: to_torch(n, a) for n, a in out.items()}

    return run


def _manifest(export_dir: Path) -> dict:
    from ssa.preprocess import check_text_graphs

    manifest = json.loads((export_dir / "manifest.json").read_text())
    check_text_graphs(manifest, export_dir)
    return manifest


def _graph(export_dir: Path, spec: dict, threads: int, precision: str, cache_dir) -> OpenVinoGraph:
    names = [t["name"] for t in spec["inputs"] + spec["outputs"]]
    return OpenVinoGraph(export_dir / spec["file"], threads, precision, cache_dir, names)


def one_precision(plan: dict[str, str], names: tuple[str, ...]) -> str:
    """The one precision of graphs that run in one loop (the caption's prefill and step graphs);
    graphs missing from `plan` run fp32."""
    values = {plan.get(n, "fp32") for n in names}
    if len(values) != 1:
        raise ValueError(f"{', '.join(names)} run in one loop: give them one precision, got {plan}")
    return values.pop()


def caption_graphs(prefill: str | Path, step: str | Path, threads: int = 2, precision: str = "fp32",
                   cache_dir: str | Path | None = None, names: tuple[str, ...] = ()) -> tuple[TensorFn, TensorFn]:
    """The caption loop's prefill and step graphs (one precision) as tensor functions: the
    prefill's cross-attention cache borrowed, and bf16 from one graph to the other in bf16."""
    io = ("cross_",) if resolve_precision(precision)[0] == "bf16" else ()
    return (graph_function(OpenVinoGraph(prefill, threads, precision, cache_dir, names, bf16_io=io, borrow=("cross_",))),
            graph_function(OpenVinoGraph(step, threads, precision, cache_dir, names, bf16_io=io)))


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
           for n in names if n not in CAPTION_GRAPHS}
    if all(n in names for n in CAPTION_GRAPHS):
        specs = [manifest["models"][n] for n in CAPTION_GRAPHS]
        io_names = tuple(t["name"] for spec in specs for t in spec["inputs"] + spec["outputs"])
        fns.update(zip(CAPTION_GRAPHS, caption_graphs(*(export_dir / spec["file"] for spec in specs), threads,
                                                      one_precision(per_graph, CAPTION_GRAPHS), cache_dir, io_names)))
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
