"""`ssa.engine.TensorModels` over named tensor functions, one per exported graph, whatever runs
them: ONNX Runtime sessions (`ssa.onnx_models`), the PyTorch export wrappers on any device
(`ssa.torch_models`), or Triton BLS requests (the `ssa_engine` model).

A tensor function takes and returns `{name: torch.Tensor}` on the engine's device, with the
tensor names of the export specs (`export/specs.py`); nothing passes through host memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from ssa.decoding import greedy_decode
from ssa.engine import DATASETS, ChunkInputs, ChunkOutputs
from ssa.preprocess import Processors
from ssa.text_cache import TextEmbeddingCache, prompt_matrix

TensorFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
# names per text-encoder call at most (a vocabulary of 10,000 names is encoded in chunks)
TEXT_ROWS = 256


def model_metadata(models: dict) -> dict:
    """What the engine needs to know of the PyTorch models beyond tensor shapes (saved in the
    export manifest): CLIP's logit scale, BLIP's start / end / pad ids and decoder depth."""
    meta = {}
    if "clip" in models:
        meta["clip_logit_scale"] = float(models["clip"].logit_scale.detach().exp())
    if "blip" in models:
        t = models["blip"].config.text_config
        meta["blip"] = {"bos_token_id": t.bos_token_id, "eos_token_id": t.sep_token_id,
                        "pad_token_id": t.pad_token_id, "layers": t.num_hidden_layers}
    return meta


def chunked(fn: TensorFn, inputs: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """`fn` over at most `rows` rows at a time (batch axis 0), outputs concatenated."""
    n = next(iter(inputs.values())).shape[0]
    if n <= rows:
        return fn(inputs)
    parts = [fn({k: v[i : i + rows] for k, v in inputs.items()}) for i in range(0, n, rows)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class BlipCaptioner:
    """Greedy BLIP captions from image embeddings with the prefill + step (key/value cache)
    graphs; the cache stays where the graphs put it (the device) from step to step. One decode at
    a time: the prefill's outputs may be borrowed from its graph (`ssa.openvino_models`: valid
    until the graph's next call), so the next prefill waits for the decode that reads them."""

    def __init__(self, prefill: TensorFn, step: TensorFn, bos_token_id: int, eos_token_id: int,
                 pad_token_id: int, layers: int):
        self.prefill_fn, self.step_fn = prefill, step
        self._lock = threading.Lock()
        self.bos, self.eos, self.pad = bos_token_id, eos_token_id, pad_token_id
        self.self_names = [f"{kv}_{i}" for i in range(layers) for kv in ("key", "value")]

    def _prefill(self, input_ids, image_embeds):
        out = self.prefill_fn({"input_ids": input_ids, "image_embeds": image_embeds})
        state = {f"past_{n}": out[f"present_{n}"] for n in self.self_names}
        state.update({k: v for k, v in out.items() if k.startswith("cross_")})
        return out["logits"], state

    def _step(self, input_ids, state, keep):
        if any(v.shape[0] != keep.shape[0] for v in state.values()):  # some rows finished last step
            state = {k: v.index_select(0, keep) for k, v in state.items()}
        out = self.step_fn({"input_ids": input_ids, **state})
        state = {**state, **{f"past_{n}": out[f"present_{n}"] for n in self.self_names}}
        return out["logits"], state

    def __call__(self, image_embeds: torch.Tensor, max_length: int) -> torch.Tensor:
        with self._lock:
            return greedy_decode(self._prefill, self._step, image_embeds, self.bos, self.eos, self.pad, max_length)


class GraphModels:
    """The engine's models over `fns`: "oneformer_coco", "oneformer_ade20k", "blip_vision",
    "clip_image", "clip_text", "clipseg_visual", "clipseg_text", "clipseg_decoder", and either
    "blip_caption" (image_embeds + max_length -> token_ids, the Triton model) or the two BLIP text
    graphs "blip_text_prefill" and "blip_text_step" (the decoding loop then runs here).

    max_rows: rows per call at most (a server's max_batch_size); None for no limit beyond the
    engine's own batch size. model_rows: a different limit for some models (on the CPU the caption
    loop takes 32 rows a request where the image towers take 8).
    """

    def __init__(self, fns: dict[str, TensorFn], metadata: dict, processors: Processors, device: torch.device,
                 max_rows: int | None = None, model_rows: dict[str, int] | None = None):
        self.fns, self.device, self.max_rows, self.model_rows = fns, device, max_rows, dict(model_rows or {})
        self.clip_logit_scale = float(metadata["clip_logit_scale"])
        if "blip_caption" not in fns:
            self.captioner = BlipCaptioner(fns["blip_text_prefill"], fns["blip_text_step"], **metadata["blip"])
        self.clip_names = TextEmbeddingCache(processors.clip_text, self._encoder("clip_text", "text_embeds"))
        self.clipseg_names = TextEmbeddingCache(processors.clipseg_text, self._encoder("clipseg_text", "cond"))

    def rows_limit(self, model: str, rows: int | None = None) -> int | None:
        """Rows per call of `model` at most: the caller's `rows` within the model's limit."""
        limits = [r for r in (rows, self.model_rows.get(model, self.max_rows)) if r]
        return min(limits) if limits else None

    def run(self, model: str, rows: int | None = None, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        limit = self.rows_limit(model, rows)
        return chunked(self.fns[model], inputs, limit) if limit else self.fns[model](inputs)

    def _encoder(self, model: str, output: str):
        from ssa.device import to_device

        def encode(input_ids, attention_mask):
            ids = to_device(input_ids, self.device, "text_tokens")
            mask = to_device(attention_mask, self.device, "text_tokens")
            return self.run(model, TEXT_ROWS, input_ids=ids, attention_mask=mask)[output]

        return encode

    def oneformer(self, dataset: str, pixel_values: torch.Tensor, task_inputs: torch.Tensor) -> torch.Tensor:
        return self.run(f"oneformer_{dataset}", pixel_values=pixel_values, task_inputs=task_inputs)["semantic_scores"]

    def blip_caption(self, pixel_values: torch.Tensor, max_length: int, rows: int | None = None) -> torch.Tensor:
        embeds = self.run("blip_vision", rows, pixel_values=pixel_values)["image_embeds"]
        if "blip_caption" not in self.fns:  # the decoding loop runs here, `rows` rows at a time
            step = rows or max(1, len(embeds))
            parts = [self.captioner(embeds[i : i + step], max_length) for i in range(0, len(embeds), step)]
            width = max(p.shape[1] for p in parts)
            return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=self.captioner.pad)
                              for p in parts])
        limit = torch.full((embeds.shape[0], 1), max_length, dtype=torch.int32, device=embeds.device)
        return self.run("blip_caption", rows, image_embeds=embeds, max_length=limit)["token_ids"]

    def clip_image(self, pixel_values: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        return self.run("clip_image", rows, pixel_values=pixel_values)["image_embeds"]

    def semantic_scores(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {ds: self.oneformer(ds, *inputs[ds]) for ds in DATASETS}

    def mask_stage(self, inputs: ChunkInputs) -> ChunkOutputs:
        return ChunkOutputs(token_ids=self.blip_caption(inputs.blip, inputs.caption_max_length),
                            image_embeds=self.clip_image(inputs.clip))

    def clip_text(self, names: Sequence[str]) -> torch.Tensor:
        return self.clip_names(names)

    def clipseg(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        acts = self.run("clipseg_visual", pixel_values=pixel_values)
        cond = prompt_matrix(prompts, self.clipseg_names).to(next(iter(acts.values())).dtype)
        return self.run("clipseg_decoder", cond=cond, **acts)["logits"]
