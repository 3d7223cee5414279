"""One declarative spec per exported model: wrapper, tensor names, dynamic axes, example inputs
and the tolerance its ONNX file must meet against PyTorch.

Axis names: "batch" is Triton's batch axis (every model batches on axis 0); other names are
dynamic too; integers are fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssa import wrappers
from ssa.preprocess import TEXT_BUCKETS
from ssa.profiles import CLIP_CONTEXT

Dims = tuple[int | str, ...]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton type name: "FP32" or "INT64"
    dims: Dims  # including the batch axis


@dataclass(frozen=True)
class ModelSpec:
    """How one Triton compute model is exported from one profile role."""

    name: str
    role: str
    wrapper: Callable[[torch.nn.Module], torch.nn.Module]
    inputs: Callable[[torch.nn.Module], list[Tensor]]
    outputs: Callable[[torch.nn.Module], list[Tensor]]
    example: Callable[[torch.nn.Module, int, int], tuple[torch.Tensor, ...]]  # (model, batch, variant) -> inputs
    atol: float  # |onnx - torch| <= atol + rtol * max|torch|, per output
    rtol: float = 1e-4
    patch_oneformer: bool = False
    external_data: bool = False  # weights beside the graph (`<name>.onnx.data`): ONNX files stop at 2 GB
    # attention scales moved onto the queries (`export.graph_passes.scale_queries_first`): the
    # caption graphs, whose one query token a row attends to a 577-token cache
    scale_queries: bool = False


def _cfg(model):
    return model.config


# ---------------------------------------------------------------- OneFormer
def _oneformer_example(model, batch, variant):
    # the export example and the check use different sizes, one not a multiple of 32
    h, w = [(128, 160), (96, 131), (161, 97)][variant]
    task = torch.zeros(batch, 77, dtype=torch.long)
    task[:, :7] = torch.tensor([49406, 518, 10549, 533, 29119, 1550, 49407])  # "the task is semantic"
    g = torch.Generator().manual_seed(variant)
    return torch.randn(batch, 3, h, w, generator=g), task


def _oneformer(name, role):
    return ModelSpec(
        name=name, role=role, wrapper=wrappers.OneFormerSemanticScores,
        inputs=lambda m: [Tensor("pixel_values", "FP32", ("batch", 3, "height", "width")),
                          Tensor("task_inputs", "INT64", ("batch", 77))],
        outputs=lambda m: [Tensor("semantic_scores", "FP32", ("batch", len(_cfg(m).id2label), "height4", "width4"))],
        example=_oneformer_example, atol=2e-3, patch_oneformer=True)


# ---------------------------------------------------------------- CLIP
def _text_example(model, batch, variant):
    # exported at the full context, checked at a bucket's length (ssa.preprocess.TEXT_BUCKETS):
    # the token axis is dynamic, a length baked into the graph fails the check
    length = (CLIP_CONTEXT, TEXT_BUCKETS[1])[variant % 2]
    g = torch.Generator().manual_seed(variant)
    ids = torch.full((batch, length), 49407, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        n = 3 + (b * 5 + variant) % 9
        ids[b, 0] = 49406
        ids[b, 1:n] = torch.randint(300, 40000, (n - 1,), generator=g)
        mask[b, : n + 1] = 1
    return ids, mask


def _text_inputs(m):
    return [Tensor("input_ids", "INT64", ("batch", "tokens")), Tensor("attention_mask", "INT64", ("batch", "tokens"))]


def _image_example(side):
    def example(model, batch, variant):
        return (torch.randn(batch, 3, side(model), side(model), generator=torch.Generator().manual_seed(variant)),)

    return example


def _clip_vision_side(m):
    return _cfg(m).vision_config.image_size


CLIP_IMAGE = ModelSpec(
    name="clip_image", role="clip", wrapper=wrappers.ClipImageEncoder,
    inputs=lambda m: [Tensor("pixel_values", "FP32", ("batch", 3, _clip_vision_side(m), _clip_vision_side(m)))],
    outputs=lambda m: [Tensor("image_embeds", "FP32", ("batch", _cfg(m).projection_dim))],
    example=_image_example(_clip_vision_side), atol=1e-4)

CLIP_TEXT = ModelSpec(
    name="clip_text", role="clip", wrapper=wrappers.ClipTextEncoder,
    inputs=_text_inputs,
    outputs=lambda m: [Tensor("text_embeds", "FP32", ("batch", _cfg(m).projection_dim))],
    example=_text_example, atol=1e-4)


# ---------------------------------------------------------------- CLIPSeg
CLIPSEG_SIDE = 512  # the engine's CLIPSeg input side (EngineParams.clipseg_size)


def _clipseg_tokens(m):
    return (CLIPSEG_SIDE // _cfg(m).vision_config.patch_size) ** 2 + 1


def _acts(m):
    """The visual tower's reduced extract-layer activations: the decoder's inputs."""
    r = _cfg(m).reduce_dim
    return [Tensor(f"act{i}", "FP32", ("batch", _clipseg_tokens(m), r)) for i in range(len(_cfg(m).extract_layers))]


CLIPSEG_VISUAL = ModelSpec(
    name="clipseg_visual", role="clipseg", wrapper=wrappers.ClipSegVisual,
    inputs=lambda m: [Tensor("pixel_values", "FP32", ("batch", 3, CLIPSEG_SIDE, CLIPSEG_SIDE))],
    outputs=lambda m: _acts(m), example=_image_example(lambda m: CLIPSEG_SIDE), atol=1e-3)

CLIPSEG_TEXT = ModelSpec(
    name="clipseg_text", role="clipseg", wrapper=wrappers.ClipSegText,
    inputs=_text_inputs,
    outputs=lambda m: [Tensor("cond", "FP32", ("batch", _cfg(m).projection_dim))],
    example=_text_example, atol=1e-4)


def _clipseg_decoder_example(model, batch, variant):
    g = torch.Generator().manual_seed(variant)
    acts = tuple(torch.randn(batch, *t.dims[1:], generator=g) for t in _acts(model))
    k = 3 - variant % 2  # K differs between export and check
    return (*acts, torch.randn(batch, k, _cfg(model).projection_dim, generator=g))


CLIPSEG_DECODER = ModelSpec(
    name="clipseg_decoder", role="clipseg", wrapper=wrappers.ClipSegDecoder,
    inputs=lambda m: _acts(m) + [Tensor("cond", "FP32", ("batch", "prompts", _cfg(m).projection_dim))],
    outputs=lambda m: [Tensor("logits", "FP32", ("batch", "prompts", CLIPSEG_SIDE, CLIPSEG_SIDE))],
    example=_clipseg_decoder_example, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- BLIP
def _blip_dims(m):
    v, t = _cfg(m).vision_config, _cfg(m).text_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    return v.image_size, tokens, v.hidden_size, t.num_hidden_layers, t.num_attention_heads, \
        t.hidden_size // t.num_attention_heads


def _blip_side(m):
    return _blip_dims(m)[0]


def kv_names(layers: int, kind: str) -> list[str]:
    """Names of the key/value tensors: kind is "past", "present" or "cross"."""
    return [f"{kind}_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]


def _blip_kv(m, kind, length):
    _, tokens, _, layers, heads, hd = _blip_dims(m)
    return [Tensor(n, "FP32", ("batch", heads, tokens if kind == "cross" else length, hd))
            for n in kv_names(layers, kind)]


BLIP_VISION = ModelSpec(
    name="blip_vision", role="blip", wrapper=wrappers.BlipVision,
    inputs=lambda m: [Tensor("pixel_values", "FP32", ("batch", 3, _blip_side(m), _blip_side(m)))],
    outputs=lambda m: [Tensor("image_embeds", "FP32", ("batch", _blip_dims(m)[1], _blip_dims(m)[2]))],
    example=_image_example(_blip_side), atol=1e-3)


def _prefill_example(model, batch, variant):
    _, tokens, d, *_ = _blip_dims(model)
    g = torch.Generator().manual_seed(variant)
    return (torch.full((batch, 1), _cfg(model).text_config.bos_token_id, dtype=torch.long),
            torch.randn(batch, tokens, d, generator=g))


BLIP_TEXT_PREFILL = ModelSpec(
    name="blip_text_prefill", role="blip", wrapper=wrappers.BlipTextPrefill,
    inputs=lambda m: [Tensor("input_ids", "INT64", ("batch", 1)),
                      Tensor("image_embeds", "FP32", ("batch", _blip_dims(m)[1], _blip_dims(m)[2]))],
    outputs=lambda m: [Tensor("logits", "FP32", ("batch", _cfg(m).text_config.vocab_size))]
    + _blip_kv(m, "present", 1) + _blip_kv(m, "cross", None),
    example=_prefill_example, atol=1e-3, scale_queries=True)


def _step_example(model, batch, variant):
    _, tokens, _, layers, heads, hd = _blip_dims(model)
    g = torch.Generator().manual_seed(variant)
    past = 2 + variant * 3
    ids = torch.randint(1, _cfg(model).text_config.vocab_size, (batch, 1), generator=g)
    kv = [torch.randn(batch, heads, past, hd, generator=g) for _ in range(2 * layers)]
    cross = [torch.randn(batch, heads, tokens, hd, generator=g) for _ in range(2 * layers)]
    return (ids, *kv, *cross)


BLIP_TEXT_STEP = ModelSpec(
    name="blip_text_step", role="blip", wrapper=wrappers.BlipTextStep,
    inputs=lambda m: [Tensor("input_ids", "INT64", ("batch", 1))] + _blip_kv(m, "past", "past_length")
    + _blip_kv(m, "cross", None),
    outputs=lambda m: [Tensor("logits", "FP32", ("batch", _cfg(m).text_config.vocab_size))]
    + _blip_kv(m, "present", "present_length"),
    example=_step_example, atol=1e-3, scale_queries=True)


# ---------------------------------------------------------------- SAM (the mask generator)
SAM_SIDE, SAM_EMBED_SIDE, SAM_LOW_RES = 1024, 64, 256


def _sam_channels(m):
    return _cfg(m).vision_config.output_channels


def _sam_encoder_example(model, batch, variant):
    g = torch.Generator().manual_seed(variant)
    return (torch.randn(1, 3, SAM_SIDE, SAM_SIDE, generator=g),)


def _sam_decoder_example(model, batch, variant):
    g = torch.Generator().manual_seed(variant)
    points = 3 * batch + variant  # the prompt axis differs between export and check
    return (torch.randn(1, _sam_channels(model), SAM_EMBED_SIDE, SAM_EMBED_SIDE, generator=g),
            torch.rand(points, 2, generator=g) * SAM_SIDE)


# No Triton batch axis: one image per call, and the decoder's prompt axis is its own ("points").
SAM_ENCODER = ModelSpec(
    name="sam_encoder", role="sam", wrapper=wrappers.SamImageEncoder,
    inputs=lambda m: [Tensor("pixel_values", "FP32", (1, 3, SAM_SIDE, SAM_SIDE))],
    outputs=lambda m: [Tensor("image_embeddings", "FP32", (1, _sam_channels(m), SAM_EMBED_SIDE, SAM_EMBED_SIDE))],
    example=_sam_encoder_example, atol=1e-3, external_data=True)

SAM_DECODER = ModelSpec(
    name="sam_decoder", role="sam", wrapper=wrappers.SamPointDecoder,
    inputs=lambda m: [Tensor("image_embeddings", "FP32", (1, _sam_channels(m), SAM_EMBED_SIDE, SAM_EMBED_SIDE)),
                      Tensor("points", "FP32", ("points", 2))],
    outputs=lambda m: [Tensor("iou_scores", "FP32", ("points", 3)),
                       Tensor("low_res_masks", "FP32", ("points", 3, SAM_LOW_RES, SAM_LOW_RES))],
    example=_sam_decoder_example, atol=1e-3)


SPECS: dict[str, ModelSpec] = {s.name: s for s in [
    _oneformer("oneformer_coco", "oneformer_coco"), _oneformer("oneformer_ade20k", "oneformer_ade20k"),
    BLIP_VISION, BLIP_TEXT_PREFILL, BLIP_TEXT_STEP, CLIP_IMAGE, CLIP_TEXT,
    CLIPSEG_VISUAL, CLIPSEG_TEXT, CLIPSEG_DECODER, SAM_ENCODER, SAM_DECODER,
]}
