"""The exported models in this process with ONNX Runtime: the engine's `TensorModels` without a
server (export checks, tests, debugging). The Triton CPU target runs the same files the same way."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssa.decoding import greedy_decode
from ssa.preprocess import Processors
from ssa.text_cache import TextEmbeddingCache, prompt_matrix


def ort_session(path: str | Path, threads: int = 2, provider: str = "cpu"):
    """An ONNX Runtime session with full graph optimisation and `threads` intra-op threads, on the
    CPU or (provider "cuda", onnxruntime-gpu installed) on the GPU.

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
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"{path}: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    elif provider != "cpu":
        raise ValueError(f"unknown execution provider {provider!r} (cpu or cuda)")
    return ort.InferenceSession(str(path), options, providers=providers)


def run_session(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `session` on named inputs; named outputs."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


class BlipCaptioner:
    """Greedy BLIP captions from image embeddings with the prefill + step (key/value cache) graphs."""

    def __init__(self, prefill, step, bos: int, eos: int, pad: int, layers: int):
        self.prefill_session, self.step_session = prefill, step
        self.bos, self.eos, self.pad = bos, eos, pad
        self.self_names = [f"{kv}_{i}" for i in range(layers) for kv in ("key", "value")]

    def _prefill(self, input_ids, image_embeds):
        out = run_session(self.prefill_session, {"input_ids": input_ids, "image_embeds": image_embeds})
        state = {f"past_{n}": out[f"present_{n}"] for n in self.self_names}
        state.update({k: v for k, v in out.items() if k.startswith("cross_")})
        return out["logits"], state

    def _step(self, input_ids, state, keep):
        if any(v.shape[0] != keep.shape[0] for v in state.values()):  # some rows finished last step
            state = {k: v[keep] for k, v in state.items()}
        out = run_session(self.step_session, {"input_ids": input_ids, **state})
        state = {**state, **{f"past_{n}": out[f"present_{n}"] for n in self.self_names}}
        return out["logits"], state

    def __call__(self, image_embeds: np.ndarray, max_length: int) -> np.ndarray:
        return greedy_decode(self._prefill, self._step, image_embeds, self.bos, self.eos, self.pad, max_length)


class OnnxModels:
    """`ssa.engine.TensorModels` over the ONNX files of an export folder (manifest.json)."""

    def __init__(self, export_dir: str | Path, processors: Processors, threads: int = 2):
        export_dir = Path(export_dir)
        manifest = json.loads((export_dir / "manifest.json").read_text())
        self.sessions = {name: ort_session(export_dir / m["file"], threads) for name, m in manifest["models"].items()}
        meta = manifest["metadata"]
        self.clip_logit_scale = meta["clip_logit_scale"]
        b = meta["blip"]
        self.captioner = BlipCaptioner(self.sessions["blip_text_prefill"], self.sessions["blip_text_step"],
                                       b["bos_token_id"], b["eos_token_id"], b["pad_token_id"], b["layers"])
        self.clip_names = TextEmbeddingCache(processors.clip_text, self._encoder("clip_text", "text_embeds"))
        self.clipseg_names = TextEmbeddingCache(processors.clipseg_text, self._encoder("clipseg_text", "cond"))

    def _encoder(self, model: str, output: str):
        def encode(input_ids, attention_mask):
            return self._run(model, input_ids=input_ids, attention_mask=attention_mask)[output]

        return encode

    def _run(self, model: str, **inputs) -> dict[str, np.ndarray]:
        return run_session(self.sessions[model], inputs)

    def oneformer(self, dataset, pixel_values, task_inputs):
        return self._run(f"oneformer_{dataset}", pixel_values=pixel_values, task_inputs=task_inputs)["semantic_scores"]

    def blip_caption(self, pixel_values, max_length):
        return self.captioner(self._run("blip_vision", pixel_values=pixel_values)["image_embeds"], max_length)

    def clip_image(self, pixel_values):
        return self._run("clip_image", pixel_values=pixel_values)["image_embeds"]

    def clip_text(self, names: Sequence[str]):
        return self.clip_names(names)

    def clipseg(self, pixel_values, prompts):
        acts = self._run("clipseg_visual", pixel_values=pixel_values)
        cond = prompt_matrix(prompts, self.clipseg_names)
        return self._run("clipseg_decoder", cond=cond, **acts)["logits"]
