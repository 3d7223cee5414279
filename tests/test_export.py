"""Every exported model passes its numeric check against PyTorch (tiny profile)."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest

from export.core import ExportCheckError, check_model, load_role
from export.specs import SPECS


@pytest.mark.parametrize("name", list(SPECS))
def test_export_within_tolerance(tiny_export, name):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    entry = manifest["models"][name]
    outputs = entry["check"]["outputs"]
    assert set(outputs) == {t["name"] for t in entry["outputs"]}
    for output, result in outputs.items():
        assert result["max_abs_diff"] <= result["bound"], (output, result)
    graph = onnx.load(str(tiny_export / entry["file"]), load_external_data=False).graph
    if SPECS[name].external_data:  # SAM ViT-H is over ONNX's 2 GB: weights in one file beside the graph
        assert (tiny_export / entry["data_file"]).stat().st_size > 0
        external = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
        assert external == {entry["data_file"]}
    # the batch axis (and every other named axis) is dynamic in the file, not fixed to the example
    for tensor, spec in zip(graph.input, entry["inputs"]):
        dims = tensor.type.tensor_type.shape.dim
        for d, s in zip(dims, spec["dims"]):
            assert bool(d.dim_param) == isinstance(s, str), (name, tensor.name, d, s)


def test_check_fails_loudly_on_a_wrong_model(tiny_profile, tiny_export):
    """The check is real: a CLIP text encoder file checked against another model's weights fails."""
    import torch

    model = load_role(tiny_profile, "clip")
    with torch.no_grad():
        model.text_projection.weight.add_(0.5 * torch.randn_like(model.text_projection.weight))
    with pytest.raises(ExportCheckError, match="clip_text.text_embeds"):
        check_model(SPECS["clip_text"], model, tiny_export / "clip_text.onnx")


def test_oneformer_runs_at_any_size(tiny_export):
    """One OneFormer file serves every image size (not only the example's)."""
    import numpy as np

    from ssa.onnx_models import ort_session

    session = ort_session(tiny_export / "oneformer_ade20k.onnx")
    task = np.zeros((1, 77), np.int64)
    for h, w in [(64, 64), (100, 77), (257, 333)]:
        out = session.run(None, {"pixel_values": np.zeros((1, 3, h, w), np.float32), "task_inputs": task})[0]
        assert out.shape[:2] == (1, 150) and out.shape[2] >= h // 4 and out.shape[3] >= w // 4
        assert np.isfinite(out).all()


def test_export_prints_one_line_per_model(tiny_profile, tmp_path):
    """The command's default output: one line per model (name, size, largest difference <= its
    tolerance), then where the files are; the tracer's warnings and loading bars only with --verbose."""
    import subprocess
    import sys
    from pathlib import Path

    only = "clip_image,clip_text,blip_vision"
    run = subprocess.run([sys.executable, "-m", "export", "--profile", "tiny", "--models_dir", str(tiny_profile.parent),
                          "--out", str(tmp_path / "onnx"), "--only", only],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert run.returncode == 0, run.stderr
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) == 4, lines
    for name, line in zip(only.split(","), lines):
        fields = line.split()
        assert fields[0] == name and fields[2] == "MB" and "max |ONNX - PyTorch|" in line and "<=" in line, line
    assert lines[3].startswith("ONNX files and manifest.json written to")
    verbose = subprocess.run([sys.executable, "-m", "export", "--profile", "tiny", "--models_dir",
                              str(tiny_profile.parent), "--out", str(tmp_path / "onnx"), "--only", "clip_text",
                              "--verbose"], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert verbose.returncode == 0 and "TracerWarning" in verbose.stderr


def test_oneformer_mask_einsum_is_a_matmul(tiny_export):
    """The export's mask head and the wrapper's class x mask product are the matmuls PyTorch computes
    for their einsums (bit-identical), so the graph has no Einsum (OpenVINO's broadcast of the
    mask features) and is otherwise checked above; its attention mask is the per-head mask's one
    copy per image."""
    import torch
    from transformers.models.oneformer import modeling_oneformer as mo

    from export.oneformer_patches import patch_oneformer_for_dynamic_hw

    embed, features = torch.randn(2, 7, 16), torch.randn(2, 16, 9, 11)

    class Heads(torch.nn.Module):  # the attributes forward_prediction_heads reads
        num_heads = 2

        def __init__(self):
            super().__init__()
            self.decoder_norm = torch.nn.LayerNorm(16)
            self.class_embed = torch.nn.Linear(16, 5)
            self.mask_embed = torch.nn.Linear(16, 16)

    heads, queries = Heads(), embed.transpose(0, 1)
    expected = mo.OneFormerTransformerDecoder.forward_prediction_heads(heads, queries, features, (5, 6))
    with patch_oneformer_for_dynamic_hw():
        got = mo.OneFormerTransformerDecoder.forward_prediction_heads(heads, queries, features, (5, 6))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    # the attention mask is handed on once per image, for the heads to share: the same mask per head
    assert got[2].shape == (2, 7, 30)
    assert torch.equal(expected[2], got[2].unsqueeze(1).repeat(1, Heads.num_heads, 1, 1).flatten(0, 1))
    for name in ("oneformer_coco", "oneformer_ade20k"):
        graph = onnx.load(str(tiny_export / f"{name}.onnx"), load_external_data=False).graph
        ops = {n.op_type for n in graph.node}
        assert "Einsum" not in ops and "MatMul" in ops, name


def test_clipseg_tower_and_decoder_are_clipseg(tiny_profile, tiny_export):
    """The visual tower (ending in the decoder's reductions, once per crop) and the decoder (the
    reduced activations repeated per prompt, the transposed convolution as a matrix product) are
    CLIPSegForImageSegmentation run on each (crop, prompt) pair, to float rounding; the tower's
    exported outputs are reduce_dim wide, not the backbone's width, and the decoder's graph has
    no reduction left and no ConvTranspose."""
    import torch

    from ssa.wrappers import ClipSegDecoder, ClipSegVisual

    model = load_role(tiny_profile, "clipseg").eval()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 512, 512, generator=g)
    cond = torch.randn(3, 4, model.config.projection_dim, generator=g)
    with torch.no_grad():
        acts = ClipSegVisual(model)(pixels)
        got = ClipSegDecoder(model)(*acts, cond)
        expected = model(pixel_values=pixels.repeat_interleave(4, dim=0), conditional_embeddings=cond.reshape(12, -1),
                         interpolate_pos_encoding=True).logits
    torch.testing.assert_close(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-5)
    assert model.config.reduce_dim < model.config.vision_config.hidden_size
    assert [a.shape[-1] for a in acts] == [model.config.reduce_dim] * len(model.config.extract_layers)
    visual = onnx.load(str(tiny_export / "clipseg_visual.onnx")).graph
    for out in visual.output:
        assert out.type.tensor_type.shape.dim[-1].dim_value == model.config.reduce_dim, out.name
    graph = onnx.load(str(tiny_export / "clipseg_decoder.onnx")).graph
    assert "ConvTranspose" not in {n.op_type for n in graph.node}  # a MatMul: the CPU ran it on AVX2
    assert not [i for i in graph.initializer if "reduces" in i.name]  # the reductions ran in the tower


def test_upsample_is_clipsegs_transposed_convolution():
    """Both of CLIPSeg's heads (one 16 x 16 transposed conv; conv, ReLU, two 4 x 4 transposed
    convs, as in rd64-refined) on channels-last tokens equal the layers on channels-first input,
    to float rounding; a transposed conv that overlaps its patches stays a convolution."""
    import torch
    from torch import nn

    from ssa.wrappers import _patchwise, upsample

    torch.manual_seed(0)
    heads = [nn.ConvTranspose2d(16, 1, 16, stride=16),
             nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, stride=4),
                           nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, stride=4)),
             nn.ConvTranspose2d(8, 2, 4, stride=2, padding=1)]
    for head in heads:
        channels = (head[0] if isinstance(head, nn.Sequential) else head).in_channels
        x = torch.randn(3, 12, 12, channels)
        with torch.no_grad():
            expected, got = head(x.permute(0, 3, 1, 2).contiguous()), upsample(head, x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert _patchwise(heads[0]) and not _patchwise(heads[2])


def _attention_graph(divisor: float, extra_reader: bool = False, branch_reader: bool = False):
    """softmax(Q K^T / divisor) V as the exporter writes it: MatMul -> Div(constant) -> Softmax;
    the scores also a graph output (`extra_reader`) or read inside an If's branches (`branch_reader`)."""
    from onnx import TensorProto, helper

    value = helper.make_tensor("d", TensorProto.FLOAT, [], [divisor])
    nodes = [helper.make_node("Constant", [], ["divisor"], value=value),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
             helper.make_node("Div", ["scores", "divisor"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    if branch_reader:
        def branch(tag):
            return helper.make_graph([helper.make_node("Identity", ["scores"], [f"seen_{tag}"])], tag, [],
                                     [helper.make_tensor_value_info(f"seen_{tag}", TensorProto.FLOAT, None)])
        cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
        nodes += [helper.make_node("Constant", [], ["cond"], value=cond),
                  helper.make_node("If", ["cond"], ["seen"], then_branch=branch("then"), else_branch=branch("else"))]
        outputs.append(helper.make_tensor_value_info("seen", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, t, 16]) for n, t in (("q", 1), ("k", 9), ("v", 9))]
    return helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_scale_moves_onto_the_queries_bit_for_bit():
    """A power-of-two attention scale moves from the scores onto the queries, and every output
    stays the same to the bit (ONNX Runtime); a divisor that is not a power of two, or scores that
    something else reads (a graph output, a node inside an If's branch), are left alone."""
    import numpy as np
    import onnxruntime as ort

    from export.graph_passes import scale_queries_first

    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((2, t, 16)).astype(np.float32) * 30 for n, t in (("q", 1), ("k", 9), ("v", 9))}

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    for divisor in (8.0, 4.0, 0.5):
        model = _attention_graph(divisor)
        before = run(model)
        assert scale_queries_first(model) == 1
        ops = [n.op_type for n in model.graph.node]
        assert "Div" not in ops and "Constant" not in ops and ops.index("Mul") < ops.index("MatMul")
        mul = next(n for n in model.graph.node if n.op_type == "Mul")
        assert mul.input[0] == "q"
        assert all(np.array_equal(a, b) for a, b in zip(before, run(model)))
    for model in (_attention_graph(8.0 ** 0.5), _attention_graph(3.0), _attention_graph(8.0, extra_reader=True),
                  _attention_graph(8.0, branch_reader=True)):
        assert scale_queries_first(model) == 0
        assert "Div" in [n.op_type for n in model.graph.node]


def test_caption_graphs_scale_the_queries(tmp_path):
    """The caption graphs as exported carry no Div of attention scores: each of the self- and
    cross-attention scales of every layer is moved onto the queries (a BLIP with 16-wide heads, so
    the scale is 1/4: the tiny profile's 8-wide heads have a scale that is not a power of two,
    which stays where it is), and the graphs still pass the export check against PyTorch; the
    step's outputs equal, bit for bit, those of the same graph exported without the move."""
    import numpy as np
    import torch
    from transformers import BlipForConditionalGeneration

    from export.core import export_model
    from ssa.onnx_models import ort_session
    from ssa.profiles import _blip

    config, _ = _blip("tiny")
    config.text_config.num_attention_heads = 2
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    layers = config.text_config.num_hidden_layers
    for name in ("blip_text_prefill", "blip_text_step"):
        path = tmp_path / f"{name}.onnx"
        assert export_model(SPECS[name], model, path) == 2 * layers, name
        check_model(SPECS[name], model, path)
        graph = onnx.load(str(path)).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        assert not [n for n in graph.node if n.op_type == "Div" and producer.get(n.input[0]) == "MatMul"], name
    spec = SPECS["blip_text_step"]
    plain = dataclasses.replace(spec, scale_queries=False)
    export_model(plain, model, tmp_path / "plain.onnx")
    feed = {t.name: a.numpy() for t, a in zip(spec.inputs(model), spec.example(model, 3, 1))}
    got = ort_session(tmp_path / "blip_text_step.onnx").run(None, feed)
    expected = ort_session(tmp_path / "plain.onnx").run(None, feed)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_deformable_sum_is_the_deformable_attention():
    """The export's deformable attention (samples laid out queries-last) gives what transformers'
    multi_scale_deformable_attention gives, within float rounding, at levels of several sizes."""
    import torch
    from transformers.models.oneformer import modeling_oneformer as mo

    from export.oneformer_patches import deformable_sum

    g = torch.Generator().manual_seed(0)
    shapes = [(13, 17), (7, 9), (4, 5)]
    batch, heads, dim, queries, points = 2, 4, 8, sum(h * w for h, w in shapes), 4
    value = torch.randn(batch, queries, heads, dim, generator=g)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g).softmax(-1)
    expected = mo.multi_scale_deformable_attention(value, shapes, locations, weights)
    got = deformable_sum(value, shapes, locations, weights)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("height, width", [(7, 11), (200, 267), (1, 5), (64, 1)])
@pytest.mark.parametrize("normalize", [False, True])
def test_separable_sine_embedding_is_the_embedding_bit_for_bit(height, width, normalize):
    """The export's position embedding (per row and column, then broadcast) is transformers'
    OneFormerSinePositionEmbedding to the bit, and only inside the export's patch."""
    import torch
    from transformers.models.oneformer import modeling_oneformer as mo

    from export.oneformer_patches import patch_oneformer_for_dynamic_hw

    for features, dtype in ((64, torch.float32), (128, torch.float16)):
        module = mo.OneFormerSinePositionEmbedding(num_position_features=features, normalize=normalize)
        shape = (2, 3, height, width)
        expected = module(shape, "cpu", dtype)
        with patch_oneformer_for_dynamic_hw():
            got = module(shape, "cpu", dtype)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)
    original = mo.OneFormerSinePositionEmbedding.forward
    with patch_oneformer_for_dynamic_hw():
        assert mo.OneFormerSinePositionEmbedding.forward is not original
    assert mo.OneFormerSinePositionEmbedding.forward is original


def test_channels_last_flattens_are_the_query_transformer_bit_for_bit():
    """The export's query transformer (its NxCxHxW -> HWxNxC flattens written permute-first, for
    OpenVINO's channels-last convolutions) gives what OneFormer's gives, to the bit, with and
    without the task token; and only inside the export's patch."""
    import torch
    from transformers.models.oneformer import modeling_oneformer as mo

    from export.oneformer_patches import _channels_last, patch_oneformer_for_dynamic_hw

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 7, generator=g)
    assert torch.equal(_channels_last(x), x.flatten(2).transpose(1, 2))
    model = mo.OneFormerTransformerDecoderQueryTransformer(d_model=32, nhead=4, num_decoder_layers=2,
                                                          dim_feedforward=64, dropout=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    src, pos = torch.randn(2, 32, 5, 6, generator=g), torch.randn(2, 32, 5, 6, generator=g)
    query_embed, task = torch.randn(7, 32, generator=g), torch.randn(1, 2, 32, generator=g)
    original = mo.OneFormerTransformerDecoderQueryTransformer.forward
    for task_token in (None, task):
        with torch.no_grad():
            expected = model(src, None, query_embed, pos, task_token)
            with patch_oneformer_for_dynamic_hw():
                assert mo.OneFormerTransformerDecoderQueryTransformer.forward is not original
                got = model(src, None, query_embed, pos, task_token)
        assert torch.equal(got, expected)
    assert mo.OneFormerTransformerDecoderQueryTransformer.forward is original


@pytest.mark.parametrize("normalize_before", [False, True])
def test_masked_cross_attention_is_the_layer_bit_for_bit(normalize_before):
    """The export's masked cross-attention (one boolean mask per image, applied to the scores by
    Where) gives what OneFormer's cross-attention layer gives with its per-head float mask, to the
    bit, with rows that mask most keys and the decoder's fix-up of fully masked rows; and only
    inside the export's patch."""
    import torch
    from transformers.models.oneformer import modeling_oneformer as mo

    from export.oneformer_patches import patch_oneformer_for_dynamic_hw

    g = torch.Generator().manual_seed(0)
    batch, heads, embed, queries, keys = 2, 4, 32, 6, 37
    layer = mo.OneFormerTransformerDecoderCrossAttentionLayer(embed, heads, normalize_before=normalize_before).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    output, memory = torch.randn(queries, batch, embed, generator=g), torch.randn(keys, batch, embed, generator=g)
    pos, query_pos = torch.randn(keys, batch, embed, generator=g), torch.randn(queries, batch, embed, generator=g)
    mask = torch.rand(batch, queries, keys, generator=g) < torch.linspace(0.05, 0.97, queries)[:, None]
    mask[0, 2] = True  # fully masked: the decoder lets such a row see every key
    mask[torch.where(mask.sum(-1) == keys)] = False
    per_head = mask.unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1)  # what OneFormer hands the layer
    with torch.no_grad():
        expected, _ = layer(output, memory, memory_mask=per_head, pos=pos, query_pos=query_pos)
        with patch_oneformer_for_dynamic_hw():
            got, weights = layer(output, memory, memory_mask=mask, pos=pos, query_pos=query_pos)
    assert weights is None and got.shape == expected.shape
    assert torch.equal(got, expected)
    original = mo.OneFormerTransformerDecoderCrossAttentionLayer.forward
    with patch_oneformer_for_dynamic_hw():
        assert mo.OneFormerTransformerDecoderCrossAttentionLayer.forward is not original
    assert mo.OneFormerTransformerDecoderCrossAttentionLayer.forward is original
