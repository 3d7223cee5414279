"""How much arithmetic the models do, and how much the device can do: the figures that say how far
each stage runs from the machine's limit.

- `GraphFlops`: the FLOPs of one call of an exported graph at the shapes it was called with,
  counted by `torch.utils.flop_counter.FlopCounterMode` on the graph's PyTorch export wrapper (the
  module its ONNX file was traced from): on meta tensors where the wrapper allows it (no arithmetic
  is done), else on the call's first row, scaled by the rows (every graph but SAM's is row by row
  on its batch axis). Memoised by shape, and kept in a JSON file between runs.
- `counting(models, flops, into)`: wraps a `GraphModels`' tensor functions so every call adds its
  FLOPs to its graph's count: the engine's FLOPs, counted on the very calls it makes.
- `ReferenceFlops`: the reference pipeline's FLOPs by stage (a timer-shaped object for
  `ssa.reference.annotate_image`, to run under a FlopCounterMode).
- `gemm_peak`: the device's dense-GEMM FLOP/s for a precision, measured (n^3 matmuls, best of a
  few): the peak each stage's share is taken against.

FlopCounterMode counts 2 FLOPs per multiply-add of matmuls, convolutions and attention (what
bounds these models); elementwise work, softmax and normalisation are not counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def _register_cpu_attention() -> None:
    """FlopCounterMode counts the CUDA attention kernels but not the CPU one that
    `scaled_dot_product_attention` dispatches to on a CPU (torch 2.13): count it the same way (QK^T
    and AV, 4 FLOPs per query x key x head dim)."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    if op not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_attention()

# graph name prefix -> stage of the benchmarks' tables
STAGE_OF = {"oneformer": "oneformer", "blip": "caption", "clip": "clip", "clipseg": "clipseg", "sam": "sam"}
MODEL_STAGES = ("oneformer", "caption", "clip", "clipseg")
COUNT_VERSION = 2  # bump when what is counted changes: the cache of earlier counts is then unused


def stage_of(graph: str) -> str:
    return STAGE_OF[graph.split("_")[0]]


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call of `fn` (FlopCounterMode), no gradients."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _profile_key(profile_dir: Path) -> str:
    return hashlib.sha256((profile_dir / "profile.json").read_bytes()).hexdigest()[:16]


def _code_key() -> str:
    """The code the counts trace: the export wrappers and the OneFormer export patches. A count
    cached under other code (a wrapper that changed what it computes) is not reused."""
    from export import oneformer_patches
    from ssa import wrappers

    digest = hashlib.sha256()
    for module in (wrappers, oneformer_patches):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


class GraphFlops:
    """FLOPs per call of each exported graph of a profile (see the module's text)."""

    def __init__(self, profile_dir: str | Path, cache_path: str | Path | None = None):
        self.profile_dir = Path(profile_dir)
        self.cache_path = Path(cache_path) if cache_path else None
        self.key = f"{COUNT_VERSION}:{_profile_key(self.profile_dir)}:{_code_key()}"
        self.memo: dict[str, int] = {}
        if self.cache_path and self.cache_path.is_file():
            self.memo = json.loads(self.cache_path.read_text()).get(self.key, {})
        self._models: dict[tuple[str, bool], torch.nn.Module] = {}  # (role, on meta) -> model
        self._real: set[str] = set()  # graphs whose wrapper cannot run on meta tensors

    def _wrapper(self, name: str, meta: bool):
        from export.specs import SPECS
        from ssa.profiles import load_role_model

        spec = SPECS[name]
        if (spec.role, meta) not in self._models:
            model = load_role_model(self.profile_dir / spec.role, spec.role).eval().requires_grad_(False)
            self._models[spec.role, meta] = model.to("meta") if meta else model
        model = self._models[spec.role, meta]
        return spec.wrapper(model).eval(), [t.name for t in spec.inputs(model)]

    def save(self) -> None:
        if self.cache_path:
            data = json.loads(self.cache_path.read_text()) if self.cache_path.is_file() else {}
            data[self.key] = self.memo
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    def __call__(self, name: str, inputs: dict[str, torch.Tensor]) -> int:
        """FLOPs of `name` called on `inputs` (only their shapes matter, and row 0's values where a
        wrapper cannot run on meta tensors)."""
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        key = f"{name}:{json.dumps(sorted(shapes.items()))}"
        if key in self.memo:
            return self.memo[key]
        if name not in self._real:
            module, names = self._wrapper(name, meta=True)
            try:
                self.memo[key] = count_flops(module, *[torch.empty(shapes[n], dtype=_traced(inputs[n].dtype),
                                                                   device="meta") for n in names])
                return self.memo[key]
            except (RuntimeError, NotImplementedError):  # a data-dependent step (.item())
                self._real.add(name)
        rows = next(iter(shapes.values()))[0]
        row_key = f"{name}:row:{json.dumps(sorted((k, s[1:]) for k, s in shapes.items()))}"
        if row_key not in self.memo:
            module, names = self._wrapper(name, meta=False)
            self.memo[row_key] = count_flops(module, *[inputs[n][:1].detach().cpu().to(_traced(inputs[n].dtype))
                                                       for n in names])
        self.memo[key] = self.memo[row_key] * rows
        return self.memo[key]


def _traced(dtype: torch.dtype) -> torch.dtype:
    """The dtype a wrapper was traced with for an input that arrives as `dtype`: float32 for the
    bf16 tensors OpenVINO hands between graphs (the caption cache); FLOPs depend on shapes only."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def counting(models, flops: GraphFlops, into: dict[str, int]) -> None:
    """Wrap every tensor function of a `ssa.graph_models.GraphModels` so each call adds its FLOPs
    to `into[graph]`."""
    for name, fn in list(models.fns.items()):
        def run(inputs, fn=fn, name=name):
            into[name] = into.get(name, 0) + flops(name, inputs)
            return fn(inputs)
        models.fns[name] = run
    if hasattr(models, "captioner"):  # the captioner holds its own references to the text graphs
        models.captioner.prefill_fn = models.fns["blip_text_prefill"]
        models.captioner.step_fn = models.fns["blip_text_step"]


def by_stage(per_graph: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for name, f in per_graph.items():
        out[stage_of(name)] += f
    return dict(out)


class ReferenceFlops:
    """FLOPs per stage of `ssa.reference.annotate_image`, passed as its `timer` while a
    FlopCounterMode (`self.counter`) is active: each stage adds what was counted inside it."""

    def __init__(self):
        self.counter = FlopCounterMode(display=False)
        self.flops: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        before = self.counter.get_total_flops()
        try:
            yield
        finally:
            self.flops[stage] += self.counter.get_total_flops() - before


def gemm_peak(device: str | torch.device = "cpu", precision: str = "fp32", n: int = 2048, repeats: int = 3,
              seconds: float = 0.5) -> float:
    """Dense-GEMM FLOP/s of `device` in `precision` ("fp32", "bf16", "fp16", or "tf32" on a GPU),
    with torch's threads as set: n x n x n matmuls for about `seconds`, best of `repeats`."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(n, n, dtype=torch.float32, device=device).to(dtype)
        b = torch.randn(n, n, dtype=torch.float32, device=device).to(dtype)
        with torch.inference_mode():
            torch.matmul(a, b)
            sync()
            start = time.perf_counter()
            calls = 0
            while time.perf_counter() - start < seconds / 4 or calls < 2:
                torch.matmul(a, b)
                calls += 1
            sync()
            per_call = (time.perf_counter() - start) / calls
            k = max(2, int(seconds / max(per_call, 1e-6)))
            best = float("inf")
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                for _ in range(k):
                    torch.matmul(a, b)
                sync()
                best = min(best, (time.perf_counter() - start) / k)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / best
