"""Memory and limits of one image in the real embedded tritonserver (tiny profile): the engine's
memory does not grow with the number of masks beyond their answers, a large photo stays inside
the stated bound, and a request over the server's limits is refused with the reason while the run
goes on."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.scaling import few_masks_document, jpeg, peak_rss, reset_peak_rss, resident
from client.engine_client import annotate
from ssa.examples import dense_document
from ssa.limits import MIB, PER_DOCUMENT_BYTE, PER_MASK, PER_PIXEL, ServerLimits, document_limit, image_bound
from ssa.params import EngineParams
from ssa.stub_health import living_instances

# the limited server's memory budget over an image's fixed terms: room for the test's photos and
# masks, and for annotation files of up to LIMITED_ROOM_MIB / PER_DOCUMENT_BYTE (2.5 MiB)
LIMITED_ROOM_MIB = 100
# peak resident memory of ssa_engine's process during a 2,000-mask image, at most this times its
# peak during a 100-mask image (before the chunked data plane: ~6x on the tiny profile, 2.4 MB of
# crops a mask)
MASKS_PEAK_RATIO = 1.25
# resident memory of ssa_engine after three more images of masks it has seen, over what it held
# before them, at most (measured +1 MiB; 15 KB a mask of the 2,200: an image's memory freed and
# given back, nothing of its masks kept)
KEPT_AFTER_IMAGES = 32 * MIB


def test_freed_memory_goes_back_to_the_system():
    """release_free_memory (called by ssa_engine after each batch of requests) gives back the pages
    freed objects left inside the heap, which free() alone keeps: 200 MB of blocks, one in 50 kept."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os
        from benchmarks.scaling import resident
        from ssa.limits import release_free_memory
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(50_000)]  # each its own malloc block
        kept = blocks[::50]  # a block in 50 stays: the heap's top is never free, so free() trims nothing
        del blocks
        before = resident(os.getpid())
        release_free_memory()
        print(before, resident(os.getpid()), len(kept))
    """)
    before, after, _ = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    print(f"resident {before / MIB:.0f} MiB -> {after / MIB:.0f} MiB")
    assert before - after >= 150 * MIB, (before, after)


@pytest.fixture(scope="module")
def own_server(repositories, tmp_path_factory):
    """A server of its own: peak memory is read from its ssa_engine process from the start."""
    from model_repository.server import EmbeddedServer

    with EmbeddedServer(repositories["cpu"], log_path=tmp_path_factory.mktemp("log") / "triton.log") as s:
        yield s


def test_peak_memory_does_not_grow_with_the_masks(own_server):
    import skimage.data
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(own_server.url)
    engine = living_instances(own_server.pid)["ssa_engine_0_0"]
    rgb = skimage.data.chelsea()  # 451 x 300
    image = jpeg(rgb)
    params = EngineParams(top_k=1)  # one CLIPSeg prompt a mask: the same data plane, a third of its time
    documents = {n: json.dumps(dense_document(rgb, n, 7, "chelsea.jpg")).encode() for n in (100, 2000)}

    def request(n: int) -> tuple[int, int]:
        """(peak, peak over what the process held before) of ssa_engine during one n-mask image."""
        before = resident(engine)
        reset_peak_rss(engine)
        labels = annotate(client, image, documents[n], params)
        assert len(labels) == n and all(lab.class_name for lab in labels)
        peak = peak_rss(engine)
        return peak, peak - before

    # the first image of each kind is not counted: it fills the caches every later image reuses
    # (CLIP text embeddings of its names, spaCy's strings, the shared memory pool)
    request(2000)
    settled = resident(engine)
    # the 100-mask image twice, its smaller peak kept: an image's peak comes while its first chunk's
    # BLIP and CLIP are in flight beside both OneFormers (timing decides how much they overlap)
    runs = [request(n) for n in (100, 2000, 100)]
    peaks = {100: tuple(min(column) for column in zip(runs[0], runs[2])), 2000: runs[1]}
    growth = peaks[2000][1] - peaks[100][1]
    kept = resident(engine) - settled
    print(f"ssa_engine peak RSS: {peaks[100][0] / MIB:.0f} MiB at 100 masks (+{peaks[100][1] / MIB:.0f} MiB over "
          f"its resident memory before the image), {peaks[2000][0] / MIB:.0f} MiB at 2,000 "
          f"(+{peaks[2000][1] / MIB:.0f} MiB): {growth / 1900 / 1024:.1f} KB a mask; {kept / MIB:+.0f} MiB kept "
          f"after 2,200 masks; every run (peak, over before) {runs}")
    assert peaks[2000][0] <= MASKS_PEAK_RATIO * peaks[100][0], runs
    assert growth <= 1900 * PER_MASK, runs  # within the bound's per-mask term
    assert kept <= KEPT_AFTER_IMAGES, kept  # what an image held goes when it is done
    height, width = rgb.shape[:2]
    for n, (_, grown) in peaks.items():  # and the whole bound of each image holds
        assert grown <= image_bound(height, width, n, params.batch_size, params.top_k), (n, runs)


def test_a_large_photo_stays_inside_the_stated_bound(own_server):
    """12 megapixels, 3 masks (one the whole photo): what the process grows by stays under the
    bound's pixel terms, and the answers come back."""
    import skimage.data
    import tritonclient.grpc as grpcclient
    from PIL import Image

    client = grpcclient.InferenceServerClient(own_server.url)
    engine = living_instances(own_server.pid)["ssa_engine_0_0"]
    height, width = 3000, 4000
    rgb = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height)))
    document = few_masks_document(height, width)  # the whole photo, its top-left quarter, a strip
    before = resident(engine)
    reset_peak_rss(engine)  # this image's peak, not an earlier one's
    labels = annotate(client, jpeg(rgb), json.dumps(document).encode())
    assert len(labels) == 3
    grown = peak_rss(engine) - before
    bound = image_bound(height, width, 3, EngineParams().batch_size, EngineParams().top_k)
    print(f"ssa_engine grew by {grown / MIB:.0f} MiB for {width} x {height} pixels; the bound is {bound / MIB:.0f} MiB "
          f"({PER_PIXEL} bytes a pixel + fixed terms)")
    assert grown <= bound


@pytest.fixture(scope="module")
def limited_server(tiny_export, tiny_profile, tmp_path_factory):
    """A server whose ssa_engine takes at most 60 masks and 300,000 pixels per image, and a memory
    budget LIMITED_ROOM_MIB over an image's fixed terms (set at generation, as `python -m
    model_repository generate --max_masks 60 --max_image_pixels 300000 --memory_budget_mb N`)."""
    from model_repository.generate import generate_repository
    from model_repository.server import EmbeddedServer

    p = EngineParams()
    budget_mb = -(-image_bound(0, 0, 0, p.batch_size, p.top_k) // MIB) + LIMITED_ROOM_MIB
    repo = generate_repository(tiny_export, tiny_profile, tmp_path_factory.mktemp("limited") / "repository", "cpu",
                               limits={"max_masks": "60", "max_image_pixels": "300000",
                                       "memory_budget_mb": str(budget_mb)})
    text = (repo / "ssa_engine" / "config.pbtxt").read_text()
    assert 'string_value: "60"' in text and 'string_value: "300000"' in text and f'"{budget_mb}"' in text
    with EmbeddedServer(repo, log_path=tmp_path_factory.mktemp("log") / "triton.log") as s:
        yield s


def test_requests_over_the_limits_are_refused_and_the_run_goes_on(limited_server, example_dir, tmp_path):
    import skimage.data
    from PIL import Image

    from client.runner import RunnerConfig, annotate_dataset
    from ssa.dataset import listings

    data = tmp_path / "data"
    data.mkdir()
    for stem in ("sa_1", "sa_3"):  # 512 x 512 and 600 x 400: within the limits
        for ext in (".jpg", ".json"):
            shutil.copy(example_dir / f"{stem}{ext}", data / f"{stem}{ext}")
    rgb = skimage.data.chelsea()  # 135,300 pixels
    (data / "dense.jpg").write_bytes(jpeg(rgb))
    (data / "dense.json").write_text(json.dumps(dense_document(rgb, 61, 8, "dense.jpg")))
    big = np.asarray(Image.fromarray(rgb).resize((700, 500)))  # 350,000 pixels
    (data / "big.jpg").write_bytes(jpeg(big))
    (data / "big.json").write_text(json.dumps(dense_document(big, 3, 9, "big.jpg")))
    shutil.copy(example_dir / "sa_3.jpg", data / "wordy.jpg")  # a valid file, but 4 MiB of JSON to parse
    doc = json.loads((example_dir / "sa_3.json").read_text())
    (data / "wordy.json").write_text(json.dumps({**doc, "notes": ["x" * 1000] * 4096}))
    summary, stop = annotate_dataset(RunnerConfig(urls=[limited_server.url], out_dir=tmp_path / "out", progress=False),
                                     listings([data]))
    assert stop is None and summary.done == 2
    failures = {Path(f["file"]).name: f["reason"] for f in summary.failures}
    assert set(failures) == {"dense.jpg", "big.jpg", "wordy.jpg"}, failures
    assert "too large: 61 masks exceed this server's limit of 60 masks per image (ssa_engine max_masks)" \
        in failures["dense.jpg"]
    assert "too large: image of 700 x 500 = 350,000 pixels exceeds this server's limit of 300,000 pixels" \
        in failures["big.jpg"]
    assert re.search(r"too large: an annotation file of [\d.]+ MiB with an image of 600 x 400 pixels needs up to "
                     r"[\d,]+ MiB to parse, over this server's [\d,]+ MiB per image", failures["wordy.jpg"])
    assert sorted(p.name for p in (tmp_path / "out" / "data").glob("*_semantic.json")) == ["sa_1_semantic.json",
                                                                                           "sa_3_semantic.json"]


def test_server_limits_from_the_config():
    auto = ServerLimits.from_config({}, "cpu", 0, images_at_once=1, batch_size=32, top_k=3)
    assert auto.max_pixels > 10_000_000 and auto.max_masks >= 10_000  # this machine: 24 GB
    assert auto.budget >= image_bound(3000, 4000, 1000, 32, 3)
    fixed = ServerLimits.from_config({"max_masks": "5", "max_image_pixels": "1000", "memory_budget_mb": "2048"},
                                     "cpu", 0, 1, 32, 3)
    assert (fixed.max_masks, fixed.max_pixels, fixed.budget) == (5, 1000, 2048 * MIB)
    fixed.check(10, 100, 5, 32, 3)
    with pytest.raises(ValueError, match="max_masks"):
        fixed.check(10, 100, 6, 32, 3)
    room = fixed.budget - image_bound(10, 100, 0, 32, 3)
    fixed.check_document(10, 100, room // PER_DOCUMENT_BYTE, 32, 3)
    with pytest.raises(ValueError, match=r"annotation file of [\d.]+ MiB .* needs up to [\d,]+ MiB to parse"):
        fixed.check_document(10, 100, room // PER_DOCUMENT_BYTE + 1, 32, 3)
    assert document_limit(4, memory=16 << 30) == (16 << 30) // 16 // PER_DOCUMENT_BYTE
    tight = ServerLimits(budget=1024 * MIB, max_masks=10**6, max_pixels=10**9)
    with pytest.raises(ValueError, match=r"needs up to [\d,]+ MiB, over this server's 1,024 MiB per image"):
        tight.check(10_000, 10_000, 10, 32, 3)
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match="'auto' or a positive integer"):
            ServerLimits.from_config({"max_masks": bad}, "cpu", 0, 1, 32, 3)
