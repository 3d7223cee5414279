"""Export-time patches that let ONE OneFormer ONNX graph run at any input height x width.

What bakes the example's size into the graph (transformers 5.24): the pixel decoder's
`torch.as_tensor(spatial_shapes_list)` and `get_reference_points`' `linspace` (both specialise the
feature sizes), a data-dependent check in the deformable attention, and Swin's size-dependent
padding/cropping branches. Each replacement below is numerically the original code
(arange(h) + 0.5 == linspace(0.5, h - 0.5, h) in float32; zero-size pads and full-size crops are
no-ops) and is applied only inside `patch_oneformer_for_dynamic_hw()`. Two more are for OpenVINO's
sake: the transformer decoder's mask einsum written as the matmul PyTorch computes it (bit-identical
in PyTorch), and the deformable attention's weighted sum over its samples laid out queries-last
(`deformable_sum`: the same samples and products, summed in another order), and the sine position
embeddings computed per row and column, then broadcast (`separable_sine_embedding`: the same values
bit for bit), and the masked cross-attention given one boolean mask per image and applying it to the
scores (`masked_attention`: bit for bit in PyTorch) instead of a float 0/-inf mask per head built
at full size and added, and the (N, C, H, W) -> (N, HW, C) flattens of the mask-feature map (the
mask matmul's operand, the query transformer's memory) written permute-first (`_channels_last`:
the same values), which OpenVINO's channels-last convolution outputs give almost for free.
Every export checks the file
against the unpatched model at image sizes other than the one traced (`export.core.check_model`).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from transformers.models.oneformer import modeling_oneformer as mo
from transformers.models.swin import modeling_swin as ms


def _sym_long(v, device):
    """0-dim int64 tensor from a (Sym)Int without specializing it (torch.as_tensor/torch.tensor specialize)."""
    if isinstance(v, torch.Tensor):  # torch.jit.trace (legacy exporter) hands out sizes as 0-dim tensors
        return v.to(device=device, dtype=torch.long)
    return torch.full((), v, dtype=torch.long, device=device)


def _pixel_decoder_forward(self, features, encoder_outputs=None, output_attentions=None,
                           output_hidden_states=None, return_dict=None):
    """Copy of OneFormerPixelDecoder.forward with `torch.as_tensor(spatial_shapes_list)` replaced."""
    output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
    output_hidden_states = (
        output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
    )
    sources = []
    position_embeddings_list = []
    for level, source in enumerate(features[::-1][: self.num_feature_levels]):
        sources.append(self.input_projections[level](source))
        position_embeddings_list.append(self.position_embedding(source.shape, source.device, source.dtype))

    masks = [torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool) for x in sources]

    source_flatten = []
    mask_flatten = []
    lvl_pos_embed_flatten = []
    spatial_shapes_list = []
    for level, (source, mask, pos_embed) in enumerate(zip(sources, masks, position_embeddings_list)):
        batch_size, num_channels, height, width = source.shape
        spatial_shapes_list.append((height, width))
        source = source.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        lvl_pos_embed = pos_embed + self.level_embed[level].view(1, 1, -1)
        lvl_pos_embed_flatten.append(lvl_pos_embed)
        source_flatten.append(source)
        mask_flatten.append(mask)
    source_flatten = torch.cat(source_flatten, 1)
    mask_flatten = torch.cat(mask_flatten, 1)
    lvl_pos_embed_flatten = torch.cat(lvl_pos_embed_flatten, 1)
    # PATCH: was torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=...) -> specializes H/W
    dev = source_flatten.device
    spatial_shapes = torch.stack(
        [torch.stack([_sym_long(h, dev), _sym_long(w, dev)]) for h, w in spatial_shapes_list])
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([self.get_valid_ratio(m, dtype=source_flatten.dtype) for m in masks], 1)

    if encoder_outputs is None:
        encoder_outputs = self.encoder(
            inputs_embeds=source_flatten,
            attention_mask=mask_flatten,
            position_embeddings=lvl_pos_embed_flatten,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )

    y = encoder_outputs.last_hidden_state
    bs = y.shape[0]
    split_size_or_sections = [height * width for height, width in spatial_shapes_list]
    y = torch.split(y, split_size_or_sections, dim=1)

    out = []
    multi_scale_features = []
    num_cur_levels = 0
    for i, z in enumerate(y):
        out.append(z.transpose(1, 2).view(bs, -1, spatial_shapes_list[i][0], spatial_shapes_list[i][1]))

    for idx, feats in enumerate(features[: self.num_fpn_levels][::-1]):
        lateral_conv = self.lateral_convs[idx]
        output_conv = self.output_convs[idx]
        cur_fpn = lateral_conv(feats)
        y = cur_fpn + nn.functional.interpolate(out[-1], size=cur_fpn.shape[-2:], mode="bilinear",
                                                align_corners=False)
        y = output_conv(y)
        out.append(y)

    for o in out:
        if num_cur_levels < self.num_feature_levels:
            multi_scale_features.append(o)
            num_cur_levels += 1

    return mo.OneFormerPixelDecoderOutput(
        mask_features=self.mask_projection(out[-1]),
        multi_scale_features=multi_scale_features,
        attentions=encoder_outputs.attentions,
    )


def _get_reference_points(spatial_shapes_list, valid_ratios, device):
    """Copy of OneFormerPixelDecoderEncoderOnly.get_reference_points with linspace -> arange + 0.5
    (torch.linspace(0.5, h - 0.5, h) specializes h; both give exactly i + 0.5 in float32)."""
    reference_points_list = []
    for lvl, (height, width) in enumerate(spatial_shapes_list):
        ref_y, ref_x = torch.meshgrid(
            torch.arange(height, device=device).to(valid_ratios.dtype) + 0.5,
            torch.arange(width, device=device).to(valid_ratios.dtype) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * width)
        ref = torch.stack((ref_x, ref_y), -1)
        reference_points_list.append(ref)
    reference_points = torch.cat(reference_points_list, 1)
    reference_points = reference_points[:, :, None] * valid_ratios[:, None]
    return reference_points


def _msda_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                  position_embeddings=None, reference_points=None, spatial_shapes=None, level_start_index=None,
                  output_attentions=False, spatial_shapes_list=None):
    """Copy of OneFormerPixelDecoderEncoderMultiscaleDeformableAttention.forward without the data-dependent
    torch_compilable_check (so TRANSFORMERS_DISABLE_TORCH_CHECK=1 is not needed)."""
    if position_embeddings is not None:
        hidden_states = self.with_pos_embed(hidden_states, position_embeddings)
    batch_size, num_queries, _ = hidden_states.shape
    batch_size, sequence_length, _ = encoder_hidden_states.shape
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(attention_mask[..., None], float(0))
    value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
    sampling_offsets = self.sampling_offsets(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
    attention_weights = self.attention_weights(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels * self.n_points)
    attention_weights = nn.functional.softmax(attention_weights, -1).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points)
    if reference_points.shape[-1] == 2:
        offset_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        sampling_locations = (reference_points[:, :, None, :, None, :]
                              + sampling_offsets / offset_normalizer[None, None, None, :, None, :])
    elif reference_points.shape[-1] == 4:
        sampling_locations = (reference_points[:, :, None, :, None, :2]
                              + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
    else:
        raise ValueError(f"Last dim of reference_points must be 2 or 4, but got {reference_points.shape[-1]}")
    output = deformable_sum(value, spatial_shapes_list, sampling_locations, attention_weights)
    output = self.output_proj(output)
    return output, attention_weights


def deformable_sum(value, spatial_shapes_list, sampling_locations, attention_weights):
    """mo.multi_scale_deformable_attention with the sampled values laid out (batch x heads, D,
    levels x points, queries) instead of (..., queries, levels x points): the same bilinear
    samples and the same products, summed over a middle axis with the queries contiguous. In
    OpenVINO with dynamic image sizes the original's weighted sum (a Multiply broadcast over D,
    then a ReduceSum over the innermost 12 values) ran as slow separate kernels; in this layout
    the product and the sum stream along the queries (OpenVINO bf16, bench sizes, median of 3:
    oneformer_coco 3.71 -> 3.05 s, oneformer_ade20k 0.90 -> 0.67 s). The sum's
    order differs, so results move by float rounding (about 1e-6 of the largest value; the export
    check bounds it)."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes_list], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes_list):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        # (B, Q, heads, P, 2) -> (B heads, P, Q, 2): a row of grid points per sampling point
        grid = grids[:, :, :, level].permute(0, 2, 3, 1, 4).flatten(0, 1)
        sampled.append(nn.functional.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(batch * heads, 1, levels * points, queries)
    output = (torch.cat(sampled, dim=2) * weights).sum(2).view(batch, heads * dim, queries)
    return output.transpose(1, 2).contiguous()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H W, C): `x.flatten(2).transpose(1, 2)`, the same values, written as
    permute-then-flatten. For OpenVINO's sake: its bf16 convolutions write channels last; flatten
    first needs the map channels first, a layout copy that ran at under 1 GB/s (0.04-0.05 s per
    256 x 200 x 267 map at 800 x 1066); the permute of a channels-last map is nearly free."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def _query_transformer_forward(self, src, mask, query_embed, pos_embed, task_token=None):
    """Copy of OneFormerTransformerDecoderQueryTransformer.forward with the NxCxHxW -> HWxNxC
    flattens written as `_channels_last` (the same values)."""
    batch_size = src.shape[0]
    src = _channels_last(src).transpose(0, 1)
    pos_embed = _channels_last(pos_embed).transpose(0, 1)
    query_embed = query_embed.unsqueeze(1).repeat(1, batch_size, 1)
    if mask is not None:
        mask = mask.flatten(1)
    if task_token is None:
        queries = torch.zeros_like(query_embed)
    else:
        queries = task_token.repeat(query_embed.shape[0], 1, 1)
    queries = self.decoder(queries, src, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_embed)
    return queries.transpose(1, 2)


def _forward_prediction_heads(self, output, mask_features, attention_mask_target_size):
    """Copy of OneFormerTransformerDecoder.forward_prediction_heads with the mask einsum
    ("bqc,bchw->bqhw") written as the batched matmul PyTorch runs it: the same products and sums.
    Not for the size: ONNX's Einsum reaches OpenVINO as a broadcast and a layout copy of the whole
    (256, H/4, W/4) mask-feature map, once per decoder layer (10 per image, about 0.6 s of 3.9 at
    800 x 1066 with dynamic sizes, bf16); a MatMul reads the map where it is."""
    decoder_output = self.decoder_norm(output)
    decoder_output = decoder_output.transpose(0, 1)
    outputs_class = self.class_embed(decoder_output)
    mask_embed = self.mask_embed(decoder_output)
    batch, _, height, width = mask_features.shape  # sizes read one by one: traced, not baked in
    # the map read channels last, (B, HW, C) transposed: the same (B, C, HW) operand (see `_channels_last`)
    outputs_mask = torch.matmul(mask_embed, _channels_last(mask_features).transpose(1, 2)).view(batch, -1, height, width)
    attention_mask = nn.functional.interpolate(
        outputs_mask, size=attention_mask_target_size, mode="bilinear", align_corners=False)
    # one mask per image, not one copy per head: `_cross_attention_forward` broadcasts it over the heads
    attention_mask = (attention_mask.sigmoid().flatten(2) < 0.5).bool()
    attention_mask = attention_mask.detach()
    return outputs_class, outputs_mask, attention_mask


def masked_attention(attn: nn.MultiheadAttention, query, key, value, mask):
    """nn.MultiheadAttention's forward in eval (sequence first, separate key and value, no key
    padding mask, no dropout) with a boolean `mask` (batch, queries, keys), True where a key is
    not attended, shared by every head: the same projections, products and softmax as
    `F.multi_head_attention_forward`, but the mask is applied to the scores where it is True
    (ONNX Where over the bool mask, broadcast over the heads) instead of being made a float
    (batch x heads, queries, keys) tensor of 0 and -inf and added (adding 0 and -inf gives the
    same scores): OpenVINO built that float tensor with a reference Broadcast kernel, 64 MB per
    layer at OneFormer COCO's 1/8 level. OpenVINO does not fuse the Where into its attention
    subgraph; it runs MatMul, Select and Softmax as separate nodes, still faster overall. Attention
    weights are not returned (OneFormer's inference does not read them)."""
    queries, batch, embed = query.shape
    heads = attn.num_heads
    head_dim = embed // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split_heads(x):  # (length, batch, embed) -> (batch x heads, length, head_dim), as PyTorch splits them
        return x.reshape(x.shape[0], batch * heads, head_dim).transpose(0, 1)

    q = split_heads(nn.functional.linear(query, w_q, b_q)) * math.sqrt(1.0 / float(head_dim))
    k = split_heads(nn.functional.linear(key, w_k, b_k))
    v = split_heads(nn.functional.linear(value, w_v, b_v))
    scores = torch.bmm(q, k.transpose(-2, -1))
    scores = scores.view(batch, heads, queries, -1).masked_fill(mask[:, None], float("-inf"))
    weights = nn.functional.softmax(scores.view(batch * heads, queries, -1), dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(queries * batch, embed)
    return nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(queries, batch, embed)


def _cross_attention_forward(self, output, memory, memory_mask=None, memory_key_padding_mask=None, pos=None,
                             query_pos=None):
    """OneFormerTransformerDecoderCrossAttentionLayer.forward (post- or pre-norm) with
    `masked_attention` over the per-image mask of `_forward_prediction_heads`; the original where
    a key padding mask or no mask is given."""
    if memory_mask is None or memory_key_padding_mask is not None:
        return _ORIGINAL_CROSS_FORWARD(self, output, memory, memory_mask, memory_key_padding_mask, pos, query_pos)
    x = self.norm(output) if self.normalize_before else output
    attended = masked_attention(self.multihead_attn, self.with_pos_embed(x, query_pos),
                                self.with_pos_embed(memory, pos), memory, memory_mask)
    output = output + self.dropout(attended)
    return (output if self.normalize_before else self.norm(output)), None


# ---- optional Swin patches (only needed for H/W that are NOT multiples of 32, or for an example size whose
# ---- feature maps need no window padding). All are exact no-ops numerically (padding by 0 / slicing to full size).
def _swin_patch_embeddings_maybe_pad(self, pixel_values, height, width):
    """SwinPatchEmbeddings.maybe_pad (modeling_swin.py:267): the `if width % patch != 0` branch is traced away."""
    pad_w = (self.patch_size[1] - width % self.patch_size[1]) % self.patch_size[1]
    pad_h = (self.patch_size[0] - height % self.patch_size[0]) % self.patch_size[0]
    return nn.functional.pad(pixel_values, (0, pad_w, 0, pad_h))


def _swin_patch_merging_maybe_pad(self, input_feature, height, width):
    """SwinPatchMerging.maybe_pad (modeling_swin.py:303): the `if height % 2 == 1 or width % 2 == 1` branch."""
    return nn.functional.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))


def _swin_layer_forward(self, hidden_states, input_dimensions, always_partition=False, **kwargs):
    """Copy of SwinLayer.forward (modeling_swin.py:529) that always crops the window padding
    (original: `if pad_values[3] > 0 or pad_values[5] > 0:` -> branch fixed by the example size)."""
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    height, width = input_dimensions
    batch_size, _, channels = hidden_states.size()
    shortcut = hidden_states
    hidden_states = self.layernorm_before(hidden_states)
    hidden_states = hidden_states.view(batch_size, height, width, channels)
    hidden_states, pad_values = self.maybe_pad(hidden_states, height, width)
    _, height_pad, width_pad, _ = hidden_states.shape
    hidden_states_windows = ms.window_partition(self.cyclic_shift(hidden_states), self.window_size)
    hidden_states_windows = hidden_states_windows.view(-1, self.window_size * self.window_size, channels)
    attn_mask = self.get_attn_mask(height_pad, width_pad, dtype=hidden_states.dtype,
                                   device=hidden_states_windows.device)
    attention_output, attn_weights = self.attention(hidden_states_windows, attn_mask, **kwargs)
    attention_output = self.dropout(attention_output)
    attention_windows = attention_output.view(-1, self.window_size, self.window_size, channels)
    attention_windows = self.cyclic_shift(
        ms.window_reverse(attention_windows, self.window_size, height_pad, width_pad), reverse=True)
    attention_windows = attention_windows[:, :height, :width, :].contiguous()  # PATCH: unconditional
    attention_windows = attention_windows.view(batch_size, height * width, channels)
    hidden_states = shortcut + self.drop_path(attention_windows)
    residual = hidden_states
    hidden_states = self.layernorm_after(hidden_states)
    hidden_states = self.mlp(hidden_states)
    hidden_states = self.dropout(hidden_states) + residual
    return hidden_states, attn_weights


def separable_sine_embedding(shape, device, dtype, num_position_features: int, normalize: bool = False,
                             scale: float | None = None, temperature: int = 10000) -> torch.Tensor:
    """OneFormerSinePositionEmbedding without a mask, computed per row and per column, then
    broadcast: the same values bit for bit (each is the same elementwise chain of the same row or
    column index), but sin/cos and the interleave over H + W positions instead of H x W. The graph
    computes it on every call (it depends on the input size only): as written, 6% of OneFormer
    COCO's OpenVINO bf16 time went to it, in reference Concat/Slice/Sin kernels over 200 x 267 x 256
    maps."""
    batch_size, _, height, width = shape
    y_embed = torch.arange(1, height + 1, dtype=dtype, device=device)
    x_embed = torch.arange(1, width + 1, dtype=dtype, device=device)
    if normalize:
        eps = 1e-6
        y_embed = y_embed / (y_embed[-1:] + eps) * scale
        x_embed = x_embed / (x_embed[-1:] + eps) * scale
    dim_t = torch.arange(num_position_features, dtype=torch.int64, device=device).to(dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_position_features)

    def interleaved(embed):  # (n,) -> (F, n): sin of the even features, cos of the odd, interleaved
        pos = embed[:, None] / dim_t
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1).transpose(0, 1)

    features = dim_t.shape[0]
    pos_y = interleaved(y_embed)[None, :, :, None].expand(batch_size, features, height, width)
    pos_x = interleaved(x_embed)[None, :, None, :].expand(batch_size, features, height, width)
    return torch.cat((pos_y, pos_x), dim=1)


def _sine_embedding_forward(self, shape, device, dtype, mask=None):
    """OneFormerSinePositionEmbedding.forward: the separable form where there is no mask (every
    call in OneFormer's inference), the original otherwise."""
    if mask is not None:
        return _ORIGINAL_SINE_FORWARD(self, shape, device, dtype, mask)
    return separable_sine_embedding(shape, device, dtype, self.num_position_features, self.normalize, self.scale,
                                    self.temperature)


_ORIGINAL_SINE_FORWARD = mo.OneFormerSinePositionEmbedding.forward
_ORIGINAL_CROSS_FORWARD = mo.OneFormerTransformerDecoderCrossAttentionLayer.forward


@contextlib.contextmanager
def patch_oneformer_for_dynamic_hw(swin=True):
    """Monkeypatch the OneFormer code paths that bake H/W into the exported graph, and the mask
    einsum (export time only)."""
    saved = [
        (mo.OneFormerPixelDecoder, "forward", mo.OneFormerPixelDecoder.__dict__["forward"]),
        (mo.OneFormerPixelDecoderEncoderOnly, "get_reference_points",
         mo.OneFormerPixelDecoderEncoderOnly.__dict__["get_reference_points"]),
        (mo.OneFormerPixelDecoderEncoderMultiscaleDeformableAttention, "forward",
         mo.OneFormerPixelDecoderEncoderMultiscaleDeformableAttention.__dict__["forward"]),
        (mo.OneFormerTransformerDecoder, "forward_prediction_heads",
         mo.OneFormerTransformerDecoder.__dict__["forward_prediction_heads"]),
        (mo.OneFormerSinePositionEmbedding, "forward", mo.OneFormerSinePositionEmbedding.__dict__["forward"]),
        (mo.OneFormerTransformerDecoderCrossAttentionLayer, "forward",
         mo.OneFormerTransformerDecoderCrossAttentionLayer.__dict__["forward"]),
        (mo.OneFormerTransformerDecoderQueryTransformer, "forward",
         mo.OneFormerTransformerDecoderQueryTransformer.__dict__["forward"]),
    ]
    if swin:
        saved += [(ms.SwinPatchEmbeddings, "maybe_pad", ms.SwinPatchEmbeddings.__dict__["maybe_pad"]),
                  (ms.SwinPatchMerging, "maybe_pad", ms.SwinPatchMerging.__dict__["maybe_pad"]),
                  (ms.SwinLayer, "forward", ms.SwinLayer.__dict__["forward"])]
        ms.SwinPatchEmbeddings.maybe_pad = _swin_patch_embeddings_maybe_pad
        ms.SwinPatchMerging.maybe_pad = _swin_patch_merging_maybe_pad
        ms.SwinLayer.forward = _swin_layer_forward
    mo.OneFormerPixelDecoder.forward = _pixel_decoder_forward
    mo.OneFormerPixelDecoderEncoderOnly.get_reference_points = staticmethod(_get_reference_points)
    mo.OneFormerPixelDecoderEncoderMultiscaleDeformableAttention.forward = _msda_forward
    mo.OneFormerTransformerDecoder.forward_prediction_heads = _forward_prediction_heads
    mo.OneFormerSinePositionEmbedding.forward = _sine_embedding_forward
    mo.OneFormerTransformerDecoderCrossAttentionLayer.forward = _cross_attention_forward
    mo.OneFormerTransformerDecoderQueryTransformer.forward = _query_transformer_forward
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
