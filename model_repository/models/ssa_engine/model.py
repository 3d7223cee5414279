"""Triton Python model `ssa_engine`: the clients' one entry point. One request = one image (its
encoded bytes) + its SA-1B annotations; the response gives, per mask, the class name, the
proposals, their CLIP scores, the CLIPSeg vote share and the caption.

A BLS model, because the flow branches and loops per image: it runs `ssa.engine.ImageJob` with the
compute models reached through BLS requests, the masks of the image a chunk (at most
`batch_size`) at a time, so its memory does not grow with their number; a request over the
instance's limits (`ssa.limits`: masks, pixels, the memory bound) is refused with INVALID_ARG
before anything is decoded. The
engine's tensors live on this instance's device (a GPU in the gpu target) and go to the compute
models by DLPack; each sub-request asks for its outputs in that memory (`preferred_memory`), so
nothing returns to the host between models. In the gpu target the image stage's independent
sub-requests (both OneFormers, BLIP, CLIP) are in flight together (`async_exec`) and two requests
of a batch are interleaved, so one image's CPU work (decoding, spaCy) overlaps another's models;
the cpu target runs them one after another (its models already use every core).

A bad request (corrupt image, invalid JSON or RLE, parameters out of range) gets its own error,
INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT), before any model runs; the others in the batch are
unaffected. The server's own failures stay INTERNAL (HTTP 500).
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ssa.device import from_dlpack
from ssa.engine import DATASETS, ChunkInputs, ChunkOutputs, EngineParams, ImageJob
from ssa.errors import InputError
from ssa.graph_models import GraphModels
from ssa.images import decode_image, image_size
from ssa.limits import ServerLimits, release_free_memory
from ssa.nouns import load_spacy
from ssa.preprocess import Processors
from ssa.sa1b import decode_annotations, parse_document
from ssa.vocabulary import Vocabulary


class SubModelError(RuntimeError):
    pass


class TritonModels(GraphModels):
    """`ssa.engine.TensorModels` over BLS requests to the compute models, tensors by DLPack."""

    def __init__(self, params: dict[str, str], processors: Processors, device: torch.device):
        self.outputs = json.loads(params["sub_model_outputs"])  # model -> its output names
        kind = pb_utils.TRITONSERVER_MEMORY_GPU if device.type == "cuda" else pb_utils.TRITONSERVER_MEMORY_CPU
        self.memory = pb_utils.PreferredMemory(kind, device.index or 0)
        fns = {name: self._function(name) for name in self.outputs}
        super().__init__(fns, {"clip_logit_scale": params["clip_logit_scale"]}, processors, device,
                         max_rows=int(params.get("sub_max_batch_size", "32")),
                         model_rows={"blip_caption": int(params.get("caption_max_batch_size", "32"))})

    def _request(self, model: str, inputs: dict[str, torch.Tensor]):
        return pb_utils.InferenceRequest(
            model_name=model, requested_output_names=self.outputs[model], preferred_memory=self.memory,
            inputs=[pb_utils.Tensor.from_dlpack(name, value.contiguous()) for name, value in inputs.items()])

    def _outputs(self, model: str, response) -> dict[str, torch.Tensor]:
        if response.has_error():
            raise SubModelError(f"{model}: {response.error().message()}")
        return {name: from_dlpack(pb_utils.get_output_tensor_by_name(response, name)) for name in self.outputs[model]}

    def _function(self, model: str):
        return lambda inputs: self._outputs(model, self._request(model, inputs).exec())

    async def _run_async(self, model: str, rows: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like `run`, every chunk of rows in flight together."""
        n = next(iter(inputs.values())).shape[0]
        step = max(1, self.rows_limit(model, rows))
        requests = [self._request(model, {k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
        parts = [self._outputs(model, r) for r in await asyncio.gather(*(req.async_exec() for req in requests))]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    async def _caption_async(self, inputs: ChunkInputs) -> torch.Tensor:
        embeds = (await self._run_async("blip_vision", len(inputs.rows), pixel_values=inputs.blip))["image_embeds"]
        limit = torch.full((embeds.shape[0], 1), inputs.caption_max_length, dtype=torch.int32, device=embeds.device)
        return (await self._run_async("blip_caption", len(inputs.rows), image_embeds=embeds,
                                      max_length=limit))["token_ids"]

    async def semantic_async(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Both OneFormers in flight together."""
        scores = await asyncio.gather(*(self._run_async(f"oneformer_{ds}", 1, pixel_values=inputs[ds][0],
                                                        task_inputs=inputs[ds][1]) for ds in DATASETS))
        return {ds: s["semantic_scores"] for ds, s in zip(DATASETS, scores)}

    async def mask_stage_async(self, inputs: ChunkInputs) -> ChunkOutputs:
        """BLIP (vision, then the caption loop) and CLIP's image model of one chunk in flight together."""
        token_ids, clip = await asyncio.gather(
            self._caption_async(inputs), self._run_async("clip_image", len(inputs.rows), pixel_values=inputs.clip))
        return ChunkOutputs(token_ids=token_ids, image_embeds=clip["image_embeds"])


async def annotate_overlapped(job: ImageJob, models: TritonModels) -> list:
    """The engine's steps with independent sub-requests in flight together: both OneFormers with
    the first chunk's BLIP and CLIP, then each chunk's BLIP and CLIP together; CLIPSeg and the
    host work of a chunk run while nothing else of this image is in flight. At most two chunks of
    one image (BLIP's, CLIP's) are in flight at once, plus the two OneFormer images."""
    semantic = asyncio.ensure_future(models.semantic_async(job.oneformer_inputs()))
    labels: list = []
    try:
        for rows in job.chunks:
            out = await models.mask_stage_async(job.chunk_inputs(rows))
            if job.label_maps is None:
                job.set_semantic(await semantic)
            labels += job.finish_chunk(rows, out)
    finally:
        if not semantic.done():
            semantic.cancel()
    return labels


@functools.lru_cache(maxsize=16)
def _vocabulary(text: str) -> Vocabulary:
    """A request's vocabulary, parsed and checked once per distinct list (its CLIP text embeddings
    are cached by the models' text cache, so each name is encoded once)."""
    return Vocabulary.from_json(json.loads(text))


def parse_params(request, defaults: EngineParams) -> tuple[EngineParams, Vocabulary | None]:
    """The request's parameters over the server's defaults, and its vocabulary (the optional
    "vocabulary" field: {"classes", "synonyms", "only"}); InputError (the client's fault) for JSON
    that is not an object of known, in-range fields, or one the exported models cannot take."""
    tensor = pb_utils.get_input_tensor_by_name(request, "params")
    if tensor is None:
        return defaults, None
    raw = tensor.as_numpy().reshape(-1)[0]
    try:
        values = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        vocabulary = None
        if isinstance(values, dict) and "vocabulary" in values:
            values = dict(values)
            vocabulary = _vocabulary(json.dumps(values.pop("vocabulary"), sort_keys=True, ensure_ascii=False))
        params = EngineParams.from_dict(values, defaults)
    except InputError as exc:
        raise InputError(f"invalid params ({exc.problem})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"invalid params ({'JSON nested too deeply' if isinstance(exc, RecursionError) else exc})") from exc
    if params.clipseg_size != defaults.clipseg_size:
        raise InputError(f"invalid params (clipseg_size is fixed at {defaults.clipseg_size} by the exported "
                         f"CLIPSeg model, got {params.clipseg_size})")
    return params, vocabulary


def bytes_of(request, name: str) -> bytes:
    """The one BYTES element of input `name`; InputError when it is missing or not one element."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    values = tensor.as_numpy().reshape(-1) if tensor is not None else np.empty(0, dtype=object)
    if values.size != 1:
        raise InputError(f"{name}: expected one BYTES element, got {values.size}")
    value = values[0]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def resolved_runtime(asked: dict) -> dict:
    """The runtime the repository asks for (`runtime_json`), with each graph's precision as it runs on
    this machine: bf16 asked on a CPU without bf16 units runs fp32, and the record says so."""
    runtime = dict(asked)
    plan = asked.get("precision")
    if asked.get("target") == "cpu" and isinstance(plan, dict) and asked.get("backend") != "onnxruntime":
        from ssa.openvino_models import resolve_precision

        on_ort = set(asked.get("onnxruntime", []))  # fp32 whatever the CPU
        resolved = {name: resolve_precision(p) if name not in on_ort else (p, None) for name, p in plan.items()}
        runtime["precision"] = {name: ran for name, (ran, _) in resolved.items()}
        notes = sorted({note for _, note in resolved.values() if note})
        if notes:
            runtime["precision_asked"], runtime["notes"] = plan, notes
    return runtime


def label_tensors(labels, k: int, runtime: bytes = b"null") -> list:
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
            pb_utils.Tensor("caption", captions), pb_utils.Tensor("runtime", np.array([[runtime]], dtype=object))]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        if params.get("device", "cpu") == "cuda":
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.processors = Processors.load(folder / "processors")
        self.models = TritonModels(params, self.processors, self.device)
        self.defaults = EngineParams(**json.loads(params.get("engine_params", "{}")))
        self.nlp = load_spacy(params.get("spacy_pipeline") or None)
        # images of one batch in progress at once in this instance (CPU work of one overlaps the
        # sub-requests of another; more only holds more memory)
        self.images_in_progress = int(params.get("images_in_progress", "2"))
        # the image stage's sub-requests together (a GPU runs them side by side) or one after another
        # (on the CPU each model already uses every core)
        self.concurrent_image_stage = params.get("concurrent_image_stage", "1") == "1"
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [{}])) or 1
        self.limits = ServerLimits.from_config(params, self.device.type, self.device.index or 0,
                                               instances * self.images_in_progress, self.defaults.batch_size,
                                               self.defaults.top_k)
        self.runtime = resolved_runtime(json.loads(params.get("runtime_json", "null")) or {})
        for note in self.runtime.get("notes", []):
            pb_utils.Logger.log_warn(f"ssa_engine: {note}")
        self.runtime_bytes = json.dumps(self.runtime, sort_keys=True).encode()
        pb_utils.Logger.log_info(f"ssa_engine limits per image: {self.limits.max_masks} masks, "
                                 f"{self.limits.max_pixels} pixels, {self.limits.budget >> 20} MiB")

    async def _annotate(self, request):
        params, vocabulary = parse_params(request, self.defaults)
        data = bytes_of(request, "image")
        height, width = image_size(data, "image")  # the header only: a huge image is refused undecoded
        self.limits.check(height, width, 0, params.batch_size, params.top_k)
        text = bytes_of(request, "annotations")
        self.limits.check_document(height, width, len(text), params.batch_size, params.top_k)
        doc = parse_document(text, "annotations")
        self.limits.check(height, width, len(doc["annotations"]), params.batch_size, params.top_k)
        image = decode_image(data, "image")
        masks = decode_annotations(doc, image.shape[:2], "annotations")
        del doc  # the masks are kept as their RLEs and extents
        if len(masks) == 0:
            return label_tensors([], params.top_k, self.runtime_bytes)
        job = ImageJob(image, masks, self.models, self.processors, params, self.nlp, vocabulary=vocabulary)
        labels = await annotate_overlapped(job, self.models) if self.concurrent_image_stage else job.run()
        return label_tensors(labels, params.top_k, self.runtime_bytes)

    async def _respond(self, request, slots: asyncio.Semaphore):
        async with slots:
            try:
                return pb_utils.InferenceResponse(await self._annotate(request))
            except InputError as exc:  # the client's fault: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT)
                return pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"invalid input: {exc}", pb_utils.TritonError.INVALID_ARG))
            except Exception as exc:  # a failed sub-model or a bug: still one response per request
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))

    async def execute(self, requests):
        slots = asyncio.Semaphore(self.images_in_progress)  # made on the loop that runs this call
        responses = list(await asyncio.gather(*(self._respond(r, slots) for r in requests)))
        release_free_memory()  # the images' buffers, freed, back to the system (not kept per arena)
        return responses
