"""Triton Python model `ssa_engine`: the clients' one entry point. One request = one image (its
encoded bytes) + its SA-1B annotations; the response gives, per mask, the class name, the
proposals, their CLIP scores, the CLIPSeg vote share and the caption.

A BLS model, because the flow branches and loops per image: it runs `ssa.engine.annotate_image`
with the compute models reached through BLS requests, every mask of the image batched per model.
A bad request (corrupt image, invalid JSON or RLE) gets its own error; the others in the batch
are unaffected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ssa.batching import chunked
from ssa.engine import EngineParams, annotate_image
from ssa.errors import InputError
from ssa.images import decode_image
from ssa.nouns import load_spacy
from ssa.preprocess import Processors
from ssa.sa1b import decode_annotations, parse_document
from ssa.text_cache import TextEmbeddingCache, prompt_matrix


def infer(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """One BLS request; raises RuntimeError with the sub-model's error."""
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()])
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class TritonModels:
    """`ssa.engine.TensorModels` over BLS requests to the compute models."""

    def __init__(self, params: dict[str, str], processors: Processors):
        self.clip_logit_scale = float(params["clip_logit_scale"])
        self.max_batch = int(params.get("sub_max_batch_size", "32"))
        self.clipseg_acts = [n for n in params["clipseg_acts"].split(",") if n]
        self.clip_names = TextEmbeddingCache(processors.clip_text, self._encoder("clip_text", "text_embeds"))
        self.clipseg_names = TextEmbeddingCache(processors.clipseg_text, self._encoder("clipseg_text", "cond"))

    def _run(self, model: str, outputs: list[str], **inputs) -> dict[str, np.ndarray]:
        return chunked(lambda batch: infer(model, batch, outputs), inputs, self.max_batch)

    def _encoder(self, model: str, output: str):
        return lambda ids, mask: self._run(model, [output], input_ids=ids, attention_mask=mask)[output]

    def oneformer(self, dataset, pixel_values, task_inputs):
        return infer(f"oneformer_{dataset}", {"pixel_values": pixel_values, "task_inputs": task_inputs},
                     ["semantic_scores"])["semantic_scores"]

    def blip_caption(self, pixel_values, max_length):
        embeds = self._run("blip_vision", ["image_embeds"], pixel_values=pixel_values)["image_embeds"]
        limit = np.full((embeds.shape[0], 1), max_length, np.int32)
        return self._run("blip_caption", ["token_ids"], image_embeds=embeds, max_length=limit)["token_ids"]

    def clip_image(self, pixel_values):
        return self._run("clip_image", ["image_embeds"], pixel_values=pixel_values)["image_embeds"]

    def clip_text(self, names):
        return self.clip_names(names)

    def clipseg(self, pixel_values, prompts):
        acts = self._run("clipseg_visual", self.clipseg_acts, pixel_values=pixel_values)
        cond = prompt_matrix(prompts, self.clipseg_names)
        return self._run("clipseg_decoder", ["logits"], cond=cond, **acts)["logits"]


def parse_params(request, defaults: EngineParams) -> EngineParams:
    tensor = pb_utils.get_input_tensor_by_name(request, "params")
    if tensor is None:
        return defaults
    raw = tensor.as_numpy().reshape(-1)[0]
    try:
        values = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        return EngineParams(**{**defaults.to_dict(), **values})
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(f"invalid params ({exc})") from exc


def bytes_of(request, name: str) -> bytes:
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def label_tensors(labels, k: int) -> list:
    n = len(labels)
    names = np.array([[lab.class_name.encode() for lab in labels]], dtype=object).reshape(1, n)
    proposals = np.full((1, n, k), b"", dtype=object)
    scores = np.zeros((1, n, k), np.float32)
    for i, lab in enumerate(labels):
        proposals[0, i, : len(lab.class_proposals)] = [p.encode() for p in lab.class_proposals]
        scores[0, i, : len(lab.proposal_scores)] = lab.proposal_scores
    votes = np.array([[lab.vote_share for lab in labels]], np.float32).reshape(1, n)
    captions = np.array([[lab.caption.encode() for lab in labels]], dtype=object).reshape(1, n)
    return [pb_utils.Tensor("class_name", names), pb_utils.Tensor("class_proposals", proposals),
            pb_utils.Tensor("proposal_scores", scores), pb_utils.Tensor("vote_share", votes),
            pb_utils.Tensor("caption", captions)]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.processors = Processors.load(folder / "processors")
        self.models = TritonModels(params, self.processors)
        self.defaults = EngineParams(**json.loads(params.get("engine_params", "{}")))
        self.nlp = load_spacy(params.get("spacy_pipeline") or None)

    def _annotate(self, request):
        params = parse_params(request, self.defaults)
        image = decode_image(bytes_of(request, "image"), "image")
        doc = parse_document(bytes_of(request, "annotations"), "annotations")
        masks = decode_annotations(doc, image.shape[:2], "annotations")
        labels = annotate_image(image, masks, self.models, self.processors, params, self.nlp)
        return label_tensors(labels, params.top_k)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._annotate(request)))
            except InputError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"invalid input: {exc}")))
            except Exception as exc:  # a failed sub-model or a bug: still one response per request
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
