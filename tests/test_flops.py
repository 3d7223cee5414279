"""The FLOP counter (`ssa.flops`) against hand counts, meta against real tensors, the engine's
per-call ledger, and the GEMM peak. No timing is asserted."""

from __future__ import annotations

import json

import torch

from ssa.flops import GraphFlops, ReferenceFlops, by_stage, count_flops, gemm_peak, stage_of


def test_linear_and_attention_by_hand():
    layer = torch.nn.Linear(64, 32)
    assert count_flops(layer, torch.zeros(3, 64)) == 2 * 3 * 64 * 32
    q = torch.randn(1, 4, 50, 8)  # the CPU attention kernel is counted too (QK^T + AV)
    assert count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 2 * 2 * 4 * 50 * 50 * 8


def test_clip_image_graph_by_hand(tiny_profile):
    """The tiny CLIP image graph counted by hand from its config: patch convolution, per layer the
    four projections, attention (QK^T and AV) and the MLP, then the projection of the pooled token."""
    config = json.loads((tiny_profile / "clip" / "config.json").read_text())
    v = config["vision_config"]
    d, inner, layers, p, side = (v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"],
                                 v["image_size"])
    patches = (side // p) ** 2
    n = patches + 1  # + the class token
    per_image = (2 * patches * 3 * p * p * d
                 + layers * (4 * 2 * n * d * d + 2 * 2 * n * n * d + 2 * 2 * n * d * inner)
                 + 2 * d * config["projection_dim"])
    flops = GraphFlops(tiny_profile)
    assert flops("clip_image", {"pixel_values": torch.zeros(3, 3, side, side)}) == 3 * per_image


def test_meta_and_real_counts_agree(tiny_profile):
    """A graph that runs on meta tensors is counted without arithmetic; one that needs real values
    (OneFormer, text encoders: data-dependent steps) on its first row, scaled by the rows: the two
    ways give the same count where both can run."""
    flops = GraphFlops(tiny_profile)
    pixels = torch.randn(2, 3, 384, 384)
    meta = flops("blip_vision", {"pixel_values": pixels})
    real = flops._wrapper("blip_vision", meta=False)[0]
    assert meta > 0 and count_flops(real, pixels[:1]) * 2 == meta
    ids = torch.zeros(5, 77, dtype=torch.long)
    text = flops("clip_text", {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert "clip_text" in flops._real and text == 5 * flops.memo[next(k for k in flops.memo if k.startswith("clip_text:row"))]


def test_counting_ledger_on_the_engine(tiny_profile, tiny_export, example_dir, nlp, tmp_path):
    """Every graph call of an engine run is counted, by stage; a second run with the cache file
    counts the same without running a wrapper."""
    from ssa.dataset import folder_items
    from ssa.engine import annotate_image
    from ssa.flops import counting
    from ssa.openvino_models import openvino_models
    from ssa.preprocess import Processors
    from ssa.runner import load_item

    item = next(iter(folder_items(example_dir)))
    image, _, masks = load_item(item)
    processors = Processors.load(tiny_profile)
    totals = []
    for _ in range(2):
        models = openvino_models(tiny_export, processors)
        per_graph: dict[str, int] = {}
        flops = GraphFlops(tiny_profile, tmp_path / "flops.json")
        counting(models, flops, per_graph)
        annotate_image(image, masks, models, processors, nlp=nlp)
        flops.save()
        totals.append(per_graph)
    assert totals[0] == totals[1]
    assert {"oneformer_coco", "oneformer_ade20k", "blip_vision", "blip_text_prefill", "clip_image",
            "clipseg_visual", "clipseg_decoder"} <= set(totals[0])
    stages = by_stage(totals[0])
    assert set(stages) == {"oneformer", "caption", "clip", "clipseg"} and all(v > 0 for v in stages.values())
    assert stage_of("blip_text_step") == "caption" and stage_of("clipseg_text") == "clipseg"
    # bf16 (the preset): the caption cache goes from graph to graph as bf16 tensors, counted at the
    # shapes the wrappers were traced with; the graphs whose calls do not depend on the captions
    # count as in fp32
    models = openvino_models(tiny_export, processors, precision=dict.fromkeys(
        ("oneformer_coco", "oneformer_ade20k", "blip_vision", "blip_text_prefill", "blip_text_step",
         "clip_image", "clipseg_visual"), "bf16"))
    per_graph = {}
    counting(models, GraphFlops(tiny_profile), per_graph)  # no cache: every call counted afresh
    annotate_image(image, masks, models, processors, nlp=nlp)
    same = ("oneformer_coco", "oneformer_ade20k", "blip_vision", "blip_text_prefill", "clip_image", "clipseg_visual")
    assert {n: per_graph[n] for n in same} == {n: totals[0][n] for n in same} and per_graph["blip_text_step"] > 0


def test_reference_stages_and_peak():
    counter = ReferenceFlops()
    layer = torch.nn.Linear(16, 8).requires_grad_(False)
    with counter.counter:
        with counter("clip"):
            layer(torch.zeros(2, 16))
        with counter("caption"):
            pass
    assert dict(counter.flops) == {"clip": 2 * 2 * 16 * 8, "caption": 0}
    assert gemm_peak("cpu", "fp32", n=256, repeats=1, seconds=0.05) > 1e8


def test_cached_counts_belong_to_the_wrappers_code(tiny_profile, tmp_path, monkeypatch):
    """A count cached under other wrapper code is not reused: a wrapper that changes what it
    computes (CLIPSeg's decoder reducing once per crop) is recounted."""
    import ssa.flops as flops_module
    from ssa.flops import GraphFlops

    cache = tmp_path / "flops.json"
    first = GraphFlops(tiny_profile, cache)
    first.memo["clip_image:[]"] = 123
    first.save()
    assert GraphFlops(tiny_profile, cache).memo == {"clip_image:[]": 123}
    monkeypatch.setattr(flops_module, "_code_key", lambda: "other wrappers")
    assert GraphFlops(tiny_profile, cache).memo == {}
