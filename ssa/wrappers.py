"""Wrapper modules: each turns one part of a Hugging Face model into a function of
plain tensors with the names and shapes the Triton models use. `export/` exports them to ONNX;
`ssa.torch_models` runs them in PyTorch on any device (the in-process GPU path)."""

from __future__ import annotations

import math

import torch
from torch import nn


class OneFormerSemanticScores(nn.Module):
    """(pixel_values (B, 3, H, W) f32, task_inputs (B, 77) i64) -> semantic_scores (B, C, H/4, W/4) f32.

    The semantic map of docs/engine.md before the resize: per query the class softmax without its
    last ("no object") column, times the query's mask sigmoid, summed over queries.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, task_inputs):
        out = self.model(pixel_values=pixel_values, task_inputs=task_inputs, output_auxiliary_logits=False)
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
        masks = out.masks_queries_logits.sigmoid()
        # the einsum "bqc,bqhw->bchw" as the batched matmul PyTorch computes for it (bit-identical):
        # ONNX's Einsum reaches OpenVINO as a broadcast and a layout copy of the class x H x W map
        batch, _, height, width = masks.shape  # sizes read one by one: traced, not baked in
        return torch.matmul(classes.transpose(1, 2), masks.flatten(2)).view(batch, -1, height, width)


def _normalise(x):
    return x / x.norm(p=2, dim=-1, keepdim=True)


class ClipImageEncoder(nn.Module):
    """pixel_values (B, 3, 224, 224) -> image_embeds (B, E), L2-normalised projections."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        return _normalise(self.clip.visual_projection(pooled))


class ClipTextEncoder(nn.Module):
    """(input_ids, attention_mask) (B, 77) i64 -> text_embeds (B, E), L2-normalised projections."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids, attention_mask):
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return _normalise(self.clip.text_projection(pooled))


class ClipSegVisual(nn.Module):
    """pixel_values (B, 3, S, S) -> the reduced activations of the extract layers, each (B, T, R).

    Runs the vision transformer only up to the last extract layer, with the positional encoding
    interpolated to S as CLIPSegForImageSegmentation does by default, and ends in the decoder's
    reductions (the linear maps D -> R = reduce_dim that CLIPSeg's decoder applies to each
    activation before it sees a prompt): what leaves the tower is D / R times smaller (48 for
    rd16, 12 for rd64), and the reductions run with the tower, once per crop. Act i is reduced by
    `decoder.reduces[n - 1 - i]`, as the decoder pairs its reductions with the activations last
    layer first.
    """

    def __init__(self, model):
        super().__init__()
        self.vision = model.clip.vision_model
        self.extract = list(model.config.extract_layers)
        self.layers = self.vision.encoder.layers[: max(self.extract) + 1]
        self.reduces = nn.ModuleList(list(model.decoder.reduces)[::-1])  # in the extract layers' order

    def forward(self, pixel_values):
        h = self.vision.pre_layrnorm(self.vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        acts = []
        for i, layer in enumerate(self.layers):
            h = layer(h, attention_mask=None)
            if isinstance(h, tuple):
                h = h[0]
            if i in self.extract:
                acts.append(self.reduces[len(acts)](h))
        return tuple(acts)


class ClipSegText(nn.Module):
    """(input_ids, attention_mask) (B, 77) -> conditional embeddings (B, P) (projected, not normalised)."""

    def __init__(self, model):
        super().__init__()
        self.clip = model.clip

    def forward(self, input_ids, attention_mask):
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.clip.text_projection(pooled)


class ClipSegDecoder(nn.Module):
    """(reduced act_i (M, T, R) for each extract layer, cond (M, K, P)) -> logits (M, K, S, S).

    Each of the M crops is decoded against its K prompts; the backbone ran once per crop. The
    steps of CLIPSegDecoder.forward after its reductions, which `ClipSegVisual` has already applied
    (a linear map that does not see the prompt: once per crop, not once per prompt; the reduced
    tensor is D / R times smaller than the activation CLIPSeg's decoder repeats K times). Its result
    is repeated for the K prompts. And the patchwise transposed convolution runs as a matrix
    product on the channels-last tokens (`upsample`): equal to float rounding.
    """

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, *inputs):
        *acts, cond = inputs
        m, k = cond.shape[0], cond.shape[1]
        d = self.decoder
        cond = cond.reshape(m * k, cond.shape[2])
        output = None
        for i, (reduced, layer) in enumerate(zip(acts[::-1], d.layers)):
            reduced = reduced.repeat_interleave(k, dim=0)
            output = reduced if output is None else reduced + output
            if i == d.conditional_layer:
                output = d.film_mul(cond) * output.permute(1, 0, 2) + d.film_add(cond)
                output = output.permute(1, 0, 2)
            output = layer(output, attention_mask=None)
            if isinstance(output, tuple):
                output = output[0]
        output = output[:, 1:, :]  # the class token dropped: (M K, tokens, reduce_dim)
        side = int(math.isqrt(output.shape[1]))
        # channels last (M K, side, side, reduce_dim): the tokens as they come, no transpose
        logits = upsample(d.transposed_convolution, output.reshape(m * k, side, side, output.shape[2])).squeeze(1)
        return logits.reshape(m, k, logits.shape[-2], logits.shape[-1])


def _patchwise(conv) -> bool:
    """Whether a ConvTranspose2d writes each input pixel to its own output patch (kernel =
    stride, no padding, dilation or groups): then it is one matrix product per pixel."""
    return (isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == conv.stride and conv.padding == (0, 0)
            and conv.output_padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)


def _patchwise_transposed_conv(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a patchwise ConvTranspose2d, channels last: x (N, H, W, C) -> (N, H kh, W kw,
    C_out), as (N H W, C) @ (C, C_out kh kw), each pixel's products laid into its
    kh x kw patch. The same sums as the convolution's (C products each, added in the matrix
    product's order instead of oneDNN's deconvolution's: equal to float rounding). On the CPU the
    deconvolution ran on an AVX2 kernel at a tenth of the matrix units' speed; a MatMul does not."""
    n, h, w, c = x.shape
    out, (kh, kw) = conv.out_channels, conv.kernel_size
    y = (x @ conv.weight.reshape(c, out * kh * kw)).reshape(n, h, w, out, kh, kw)  # weight (C, C_out, kh, kw)
    if conv.bias is not None:
        y = y + conv.bias.reshape(1, 1, 1, out, 1, 1)
    return y.permute(0, 1, 4, 2, 5, 3).reshape(n, h * kh, w * kw, out)


def upsample(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIPSeg's transposed-convolution head (one ConvTranspose2d, or a Sequential of convs,
    activations and transposed convs) on channels-last x (N, H, W, C) -> (N, C_out, H', W').
    Patchwise transposed convs run as matrix products on channels-last data; anything else on
    channels-first, as the layer itself computes it."""
    last = True  # x is channels last
    for layer in (layers if isinstance(layers, nn.Sequential) else [layers]):
        if _patchwise(layer):
            x = _patchwise_transposed_conv(layer, x if last else x.permute(0, 2, 3, 1))
            last = True
        elif isinstance(layer, (nn.ReLU, nn.GELU, nn.Identity)):
            x = layer(x)
        else:
            x = layer(x.permute(0, 3, 1, 2) if last else x)
            last = False
    return x.permute(0, 3, 1, 2) if last else x


class BlipVision(nn.Module):
    """pixel_values (B, 3, 384, 384) -> image_embeds (B, S, D)."""

    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values):
        return self.vision(pixel_values=pixel_values).last_hidden_state


class BlipTextPrefill(nn.Module):
    """(input_ids (B, 1), image_embeds (B, S, D)) -> logits (B, V), then per layer self k, v
    (B, H, 1, hd), then per layer cross k, v (B, H, S, hd)."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.text_decoder
        self.layers = model.config.text_config.num_hidden_layers

    def forward(self, input_ids, image_embeds):
        from transformers import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=image_embeds, cache=cache, use_cache=True)
        c = out.cache
        res = [out.logits[:, -1, :]]
        for i in range(self.layers):
            res += [c.self_attention_cache.layers[i].keys, c.self_attention_cache.layers[i].values]
        for i in range(self.layers):
            res += [c.cross_attention_cache.layers[i].keys, c.cross_attention_cache.layers[i].values]
        return tuple(res)


class BlipTextStep(nn.Module):
    """(input_ids (B, 1), past self k, v per layer (B, H, T, hd), cross k, v per layer) ->
    logits (B, V), present self k, v per layer (B, H, T + 1, hd)."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.text_decoder
        self.layers = model.config.text_config.num_hidden_layers

    def forward(self, input_ids, *kv):
        from transformers import DynamicCache, EncoderDecoderCache

        n = self.layers
        self_kv, cross_kv = kv[: 2 * n], kv[2 * n :]
        cache = EncoderDecoderCache(
            DynamicCache(ddp_cache_data=[(self_kv[2 * i], self_kv[2 * i + 1]) for i in range(n)]),
            DynamicCache(ddp_cache_data=[(cross_kv[2 * i], cross_kv[2 * i + 1]) for i in range(n)]),
        )
        for i in range(n):
            cache.is_updated[i] = True
        # encoder_hidden_states only switches cross-attention on; k/v come from the cache
        ck = cross_kv[0]
        enc = ck.transpose(1, 2).reshape(ck.shape[0], ck.shape[2], -1)
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=enc, cache=cache, use_cache=True)
        c = out.cache
        res = [out.logits[:, -1, :]]
        for i in range(n):
            res += [c.self_attention_cache.layers[i].keys, c.self_attention_cache.layers[i].values]
        return tuple(res)


class SamImageEncoder(nn.Module):
    """pixel_values (1, 3, 1024, 1024) -> image_embeddings (1, C, 64, 64): SAM's ViT and neck."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values):
        return self.sam.get_image_embeddings(pixel_values)


class SamPointDecoder(nn.Module):
    """(image_embeddings (1, C, 64, 64), points (P, 2) in the 1024 frame) -> iou_scores (P, 3),
    low_res_masks (P, 3, 256, 256): SAM's prompt encoder and mask decoder, one foreground point
    per prompt, three masks each (multimask output), every prompt of an image in one call."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, image_embeddings, points):
        points = points[None, :, None, :]
        labels = torch.ones_like(points[..., 0], dtype=torch.long)
        out = self.sam(image_embeddings=image_embeddings, input_points=points, input_labels=labels,
                       multimask_output=True)
        return out.iou_scores[0], out.pred_masks[0]
