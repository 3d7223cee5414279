"""The batch runner against the real embedded tritonserver (tiny profile): folders, tar shards and
list files give the reference pipeline's labels; shards split the set exactly once; bad files are
recorded while the rest succeed; a server killed mid-run is waited for, or the run stops and a
rerun resumes, and either way the outputs equal an uninterrupted run's byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from client.runner import RunnerConfig, annotate_dataset
from model_repository.server import EmbeddedServer, free_port
from ssa.dataset import Shard, listings
from ssa.outputs import FAILURES_FILE
from ssa.params import SamParams

COPIES = 3  # the kill tests run the example set 3 times over, so a kill lands mid-run


@pytest.fixture(scope="module", autouse=True)
def default_umask():
    """Outputs are checked under the default umask (022): readable by everyone, as tools write them."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def assert_readable_by_others(folder: Path) -> None:
    import stat

    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {"0o644"}, modes


def run(server_urls, data, out_dir, **kw):
    cfg = RunnerConfig(urls=list(server_urls), out_dir=Path(out_dir), progress=False, **kw)
    return annotate_dataset(cfg, listings([Path(p) for p in data]))


def outputs(out_dir: Path) -> dict[str, bytes]:
    """{path under the input's output folder: bytes} of every `*_semantic.json` of a run over one
    input (the layout mirrors the input: `<out_dir>/<input name>/...`)."""
    return {p.relative_to(out_dir).as_posix().split("/", 1)[1]: p.read_bytes()
            for p in sorted(out_dir.rglob("*_semantic.json"))}


def assert_no_temporary_file(out_dir: Path) -> None:
    assert not [p for p in out_dir.rglob(".*")], "temporary files left behind"


@pytest.fixture(scope="module")
def folder_run(server, example_dir, tmp_path_factory):
    """The example folder annotated once, uninterrupted, 2 requests in flight, with PNGs."""
    out = tmp_path_factory.mktemp("folder_run")
    summary, stop = run([server.url], [example_dir], out, in_flight=2, save_img=True)
    assert stop is None and not summary.failures
    return out, summary


def test_folder_labels_equal_the_reference(folder_run, reference_labels, example_dir):
    root, summary = folder_run
    out = root / example_dir.name  # outputs mirror the input: <out_dir>/<input folder's name>/
    assert summary.done == 6 and summary.masks == sum(len(v) for v in reference_labels.values())
    for stem, expected in reference_labels.items():
        doc = json.loads((out / f"{stem}_semantic.json").read_text())
        assert doc["ssa"]["engine"] == "triton ssa_engine" and doc["ssa"]["profile"] == "tiny"
        runtime = doc["ssa"]["runtime"]  # what ran the models: OpenVINO, every graph fp32 (the shared server)
        assert (runtime["target"], runtime["backend"]) == ("cpu", "openvino")
        assert set(runtime["precision"].values()) == {"fp32"} and "oneformer_coco" in runtime["precision"]
        assert len(doc["annotations"]) == len(expected)
        for ann, e in zip(doc["annotations"], expected):
            assert (ann["class_name"], ann["class_proposals"]) == (e.class_name, e.class_proposals), stem
            assert ann["class_proposal_scores"] == pytest.approx(e.proposal_scores, abs=1e-4)
            assert 0 < ann["class_name_vote"] <= 1 and "segmentation" in ann and "bbox" in ann
        assert (out / f"{stem}_semantic.png").stat().st_size > 0
    assert not (root / FAILURES_FILE).exists()
    assert_readable_by_others(out)


def test_rerun_skips_everything_and_changes_nothing(server, example_dir, folder_run):
    out, _ = folder_run
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    summary, stop = run([server.url], [example_dir], out)
    assert stop is None and (summary.done, summary.skipped) == (0, 6)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before


def test_tar_shard_and_list_file_give_the_same_bytes(server, example_dir, folder_run, tmp_path):
    shard = tmp_path / "sa_000000.tar"
    with tarfile.open(shard, "w") as tar:
        for p in sorted(example_dir.iterdir()):
            tar.add(p, arcname=p.name)
    listed = tmp_path / "list.txt"
    listed.write_text("# images of the example set\n" + "\n".join(str(p) for p in sorted(example_dir.glob("*.jpg"))))
    for source, name in ((shard, "tar"), (listed, "list")):
        summary, stop = run([server.url], [source], tmp_path / name, in_flight=3)
        assert stop is None and summary.done == 6 and not summary.failures, name
        assert [p.name for p in (tmp_path / name).iterdir()] == [source.stem], name  # <tar or list stem>/
    assert outputs(tmp_path / "tar") == outputs(folder_run[0])
    # the list names the images by absolute paths outside its folder: mirrored whole under list/
    listed_out = {Path(k).name: v for k, v in outputs(tmp_path / "list").items()}
    assert listed_out == outputs(folder_run[0])
    assert all(k.startswith(example_dir.as_posix().lstrip("/")) for k in outputs(tmp_path / "list"))


def test_shards_cover_the_set_exactly_once(server, example_dir, folder_run, tmp_path):
    keys = sorted(f"{example_dir.name}/{p.stem}" for p in example_dir.glob("*.jpg"))
    done = []
    for i in range(3):
        summary, stop = run([server.url], [example_dir], tmp_path, shard=Shard(i, 3))
        assert stop is None and not summary.failures and summary.skipped == 0
        done.append(summary.done)
    assert sum(done) == len(keys) and sorted(sum(([k for k in keys if k in Shard(i, 3)] for i in range(3)), [])) == keys
    assert outputs(tmp_path) == outputs(folder_run[0])


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "0/0", "-1/2"])
def test_bad_shard_arguments(text):
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(text)


def test_bad_files_are_recorded_and_the_rest_succeed(server, example_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("sa_2", "sa_3", "sa_4", "sa_5", "sa_6"):
        for ext in (".jpg", ".json"):
            shutil.copy(example_dir / f"{stem}{ext}", data / f"{stem}{ext}")
    (data / "sa_2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (data / "sa_3.json").write_text('{"image": {}, "annotations": [')
    doc = json.loads((data / "sa_4.json").read_text())
    doc["annotations"][1]["segmentation"]["size"] = [7, 9]
    (data / "sa_4.json").write_text(json.dumps(doc))
    (data / "sa_5.json").unlink()  # no annotations: the server's SAM makes them (SSA + SAM)
    (data / "sa_6.jpg").rename(data / "sa_6.png")  # an image of another format is found the same way
    shutil.copy(example_dir / "sa_1.json", data / "lonely.json")  # a JSON with no image: missing data
    (data / "zz.tar").write_bytes(b"not a tar at all" * 100)
    shutil.copy(example_dir / "sa_1.jpg", data / "no_masks.jpg")  # valid: an image without annotations
    doc = json.loads((example_dir / "sa_1.json").read_text())
    (data / "no_masks.json").write_text(json.dumps({**doc, "annotations": []}))
    summary, stop = run([server.url], [data], tmp_path / "out", in_flight=2, sam_params=SamParams(points_per_side=4))
    assert stop is None and summary.done == 3
    failures = {Path(f["file"].split(":")[0]).name: f["reason"] for f in summary.failures}
    assert set(failures) == {"sa_2.jpg", "sa_3.json", "sa_4.json", "zz.tar", "lonely.json"}
    assert "no image beside it" in failures["lonely.json"]
    assert "unreadable image" in failures["sa_2.jpg"]
    assert "invalid JSON" in failures["sa_3.json"]
    assert "RLE size [7, 9] differs from the image size" in failures["sa_4.json"]
    assert "annotation" in failures["sa_4.json"]
    assert "not an uncompressed tar" in failures["zz.tar"]
    recorded = json.loads((tmp_path / "out" / FAILURES_FILE).read_text())
    assert len(recorded) == 5 and all(set(f) == {"file", "reason"} for f in recorded)
    assert not any("0x" in f["reason"] for f in recorded)  # the file and the problem, no object addresses
    assert sorted(outputs(tmp_path / "out")) == ["no_masks_semantic.json", "sa_5_semantic.json", "sa_6_semantic.json"]
    assert (tmp_path / "out" / "data" / "sa_5.json").is_file()  # SAM's masks, SA-1B form
    assert json.loads((tmp_path / "out" / "data" / "no_masks_semantic.json").read_text())["annotations"] == []
    assert_readable_by_others(tmp_path / "out")  # failures.json
    assert_readable_by_others(tmp_path / "out" / "data")  # outputs


def test_links_that_loop_or_lead_nowhere_and_fifos_fail_with_the_reason(server, example_dir, tmp_path):
    """Entries that cannot be read are listed and fail with the file and the reason, without
    blocking (a FIFO named x.jpg or x.tar) or stopping the listing (a link loop once made
    `is_file()` raise, the listing task die and the run wait forever); an image whose JSON is a
    dangling link fails instead of being sent to SAM."""
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("sa_1", "sa_2", "sa_3"):
        for ext in (".jpg", ".json"):
            shutil.copy(example_dir / f"{stem}{ext}", data / f"{stem}{ext}")
    os.symlink("loop_b.jpg", data / "loop_a.jpg")
    os.symlink("loop_a.jpg", data / "loop_b.jpg")
    os.symlink("nowhere.jpg", data / "dangling.jpg")
    shutil.copy(example_dir / "sa_1.json", data / "dangling.json")
    (data / "sa_2.json").rename(data / "sa_2.moved")
    os.symlink("sa_2.moved.gone", data / "sa_2.json")  # its image is fine, its JSON a dangling link
    os.mkfifo(data / "fifo.jpg")
    shutil.copy(example_dir / "sa_1.json", data / "fifo.json")
    os.mkfifo(data / "shard.tar")
    (data / "folder.jpg").mkdir()  # a folder with an image's name: walked as a folder, not read
    summary, stop = run([server.url], [data], tmp_path / "out", in_flight=2)
    assert stop is None and summary.done == 2
    failures = {Path(f["file"].split(":")[0]).name: f["reason"] for f in summary.failures}
    assert failures == {
        "loop_a.jpg": "cannot read image (Too many levels of symbolic links)",
        "loop_b.jpg": "cannot read image (Too many levels of symbolic links)",
        "dangling.jpg": "cannot read image (No such file or directory)",
        "sa_2.json": "cannot read annotation file (No such file or directory)",
        "fifo.jpg": "cannot read image (not a regular file)",
        "shard.tar": "cannot read tar shard (not a regular file)",
    }, failures
    assert sorted(outputs(tmp_path / "out")) == ["sa_1_semantic.json", "sa_3_semantic.json"]
    assert not (tmp_path / "out" / "data" / "sa_2.json").exists()  # not sent to SAM


def test_names_too_long_for_their_outputs_fail_alone(server, example_dir, tmp_path):
    """An input whose stem leaves no room for `<stem>_semantic.json` and its temporary name (a
    240-character file name is valid, its outputs would not be), or a list file line far longer
    than a name can be, fails with the reason; the other images of the same folder and list file
    are done, and `ssa status` counts them without raising ENAMETOOLONG."""
    from ssa.layout import run_status

    data = tmp_path / "data"
    data.mkdir()
    long = "L" * 240
    for stem, target in (("sa_1", "sa_1"), ("sa_2", long)):
        for ext in (".jpg", ".json"):
            shutil.copy(example_dir / f"{stem}{ext}", data / f"{target}{ext}")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{example_dir / 'sa_3.jpg'}\n{'x' * 5000}.jpg\n{example_dir / 'sa_3.jpg'}\n")
    summary, stop = run([server.url], [data, listed], tmp_path / "out", in_flight=2)
    assert stop is None and summary.done == 2
    reasons = {Path(f["file"]).name[:8]: f["reason"] for f in summary.failures}
    assert sorted(reasons) == ["LLLLLLLL", "sa_3.jpg", "xxxxxxxx"], reasons
    assert reasons["LLLLLLLL"].startswith("name too long for its outputs: a stem of 240 bytes, over the 226")
    assert reasons["xxxxxxxx"].startswith("name too long for its outputs: a stem of 5000 bytes")
    assert reasons["sa_3.jpg"].endswith("(it is listed twice)")
    assert sorted(Path(k).name for k in outputs(tmp_path / "out")) == ["sa_1_semantic.json", "sa_3_semantic.json"]
    status = run_status(tmp_path / "out", [data, listed])
    assert (status.total.images, status.total.done, status.total.failed) == (4, 2, 2)
    summary, stop = run([server.url], [data, listed], tmp_path / "out")  # a rerun: the same failures, no error
    assert stop is None and (summary.done, summary.skipped, len(summary.failures)) == (0, 2, 3)


def test_links_inside_a_tar_fail_and_are_not_followed(server, example_dir, tmp_path):
    """A symbolic or hard link member named like an image fails as a link (one may point outside
    the tar: /etc/passwd), its JSON is not reported as having no image, and the tar's real files
    are done."""
    shard = tmp_path / "links.tar"
    with tarfile.open(shard, "w") as tar:
        for p in sorted(example_dir.glob("sa_1.*")):
            tar.add(p, arcname=p.name)
        for name, kind, target in (("sym.jpg", tarfile.SYMTYPE, "/etc/passwd"), ("hard.jpg", tarfile.LNKTYPE, "sa_1.jpg")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
            tar.add(example_dir / "sa_2.json", arcname=name.replace(".jpg", ".json"))
    summary, stop = run([server.url], [shard], tmp_path / "out")
    assert stop is None and summary.done == 1
    assert sorted((f["file"], f["reason"]) for f in summary.failures) == [
        (f"{shard}:hard.jpg", "a link inside the tar (to 'sa_1.jpg'); links are not followed, store the file itself"),
        (f"{shard}:sym.jpg", "a link inside the tar (to '/etc/passwd'); links are not followed, store the file itself"),
    ]
    assert list(outputs(tmp_path / "out")) == ["sa_1_semantic.json"]  # under links/


def test_a_listing_that_fails_part_way_ends_the_run(server, example_dir, folder_run, tmp_path):
    """Listing that raises after some sources (a bug, or inputs that vanish mid-run) ends the run
    once what was listed is done: the stop names the source and the reason, the outputs written
    are whole, and the command exits 1; it never leaves the run waiting for items."""
    import threading

    from client.runner import ListingStopped

    def sources():
        yield from listings([example_dir])
        raise OSError(5, "Input/output error", "/mnt/gone")

    cfg = RunnerConfig(urls=[server.url], out_dir=tmp_path / "out", progress=False, in_flight=2)
    result = []
    worker = threading.Thread(target=lambda: result.append(annotate_dataset(cfg, sources())), daemon=True)
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "the run waited on after its listing failed"
    summary, stop = result[0]
    assert isinstance(stop, ListingStopped), stop
    assert f"stopped after {example_dir}" in str(stop) and "OSError: [Errno 5] Input/output error" in str(stop)
    assert summary.done == 6 and outputs(tmp_path / "out") == outputs(folder_run[0])
    recorded = json.loads((tmp_path / "out" / FAILURES_FILE).read_text())
    assert [f["file"] for f in recorded] == [str(example_dir)] and "rerun to resume" in recorded[0]["reason"]
    assert_no_temporary_file(tmp_path / "out")


def test_unreachable_server_stops_with_a_clear_message(example_dir, tmp_path):
    url = f"127.0.0.1:{free_port()}"
    summary, stop = run([url], [example_dir], tmp_path, retry_limit=1.0)
    assert stop is not None and url in str(stop) and "not ready after" in str(stop)
    assert summary.done == 0 and not outputs(tmp_path)


# --- servers killed mid-run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def copied_examples(example_dir, tmp_path_factory) -> Path:
    """The example set COPIES times under other names: the same bytes, so the same outputs."""
    data = tmp_path_factory.mktemp("copies")
    for k in range(COPIES):
        for p in example_dir.iterdir():
            os.link(p, data / f"c{k}_{p.name}")
    return data


def start_runner(data: Path, out: Path, url: str, retry_limit: float, log: Path, *options: str) -> subprocess.Popen:
    """`ssa annotate` in a process of its own (2 in flight unless `options` say otherwise), its output to `log`."""
    cmd = [sys.executable, "-m", "ssa", "annotate", "--data", str(data), "--out_dir", str(out), "--url", url,
           "--in_flight", "2", "--retry_limit", str(retry_limit), *options]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})


def watch_until(out: Path, condition, timeout: float = 300.0) -> None:
    """Poll `out` until `condition()`; every visible output must be whole JSON all along."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for p in out.rglob("*_semantic.json"):
            json.loads(p.read_bytes())  # a partial file would fail here
        time.sleep(0.05)


def expected_copies(folder_out: Path) -> dict[str, bytes]:
    return {f"c{k}_{name}": data for k in range(COPIES) for name, data in outputs(folder_out).items()}


def test_server_killed_and_restarted_mid_run(repositories, copied_examples, folder_run, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    first = EmbeddedServer(repositories["cpu"], grpc_port, http_port, log_path=tmp_path / "first.log").start()
    out = tmp_path / "out"
    runner = start_runner(copied_examples, out, first.url, 240, tmp_path / "runner.log")
    try:
        watch_until(out, lambda: len(outputs(out)) >= 2)
        first.kill()
        done_at_kill = len(outputs(out))
        watch_until(out, lambda: True)
        time.sleep(2)
        with EmbeddedServer(repositories["cpu"], grpc_port, http_port, log_path=tmp_path / "second.log"):
            watch_until(out, lambda: runner.poll() is not None)
    finally:
        runner.kill() if runner.poll() is None else None
        first.stop()
    log = (tmp_path / "runner.log").read_text()
    assert runner.returncode == 0, log
    assert done_at_kill < 6 * COPIES and "unavailable" in log  # the kill really landed mid-run
    assert outputs(out) == expected_copies(folder_run[0])
    assert_no_temporary_file(out)


def test_server_down_too_long_stops_and_a_rerun_resumes(repositories, copied_examples, folder_run, tmp_path):
    server = EmbeddedServer(repositories["cpu"], log_path=tmp_path / "first.log").start()
    out = tmp_path / "out"
    runner = start_runner(copied_examples, out, server.url, 3, tmp_path / "runner.log")
    try:
        watch_until(out, lambda: len(outputs(out)) >= 2)
        server.kill()
        watch_until(out, lambda: runner.poll() is not None, timeout=120)
    finally:
        runner.kill() if runner.poll() is None else None
        server.stop()
    log = (tmp_path / "runner.log").read_text()
    assert runner.returncode == 3 and "rerun to resume" in log, log
    partial = len(outputs(out))
    assert 2 <= partial < 6 * COPIES
    with EmbeddedServer(repositories["cpu"], log_path=tmp_path / "second.log") as again:
        summary, stop = run([again.url], [copied_examples], out, in_flight=2)
    assert stop is None and summary.skipped == partial and summary.done == 6 * COPIES - partial
    assert outputs(out) == expected_copies(folder_run[0])


def test_work_of_a_lost_server_goes_to_the_others(repositories, copied_examples, folder_run, tmp_path):
    lost = EmbeddedServer(repositories["cpu"], log_path=tmp_path / "lost.log").start()
    out = tmp_path / "out"
    with EmbeddedServer(repositories["cpu"], log_path=tmp_path / "kept.log") as kept:
        cmd = [sys.executable, "-m", "ssa", "annotate", "--data", str(copied_examples), "--out_dir", str(out),
               "--url", lost.url, "--url", kept.url, "--in_flight", "1", "--retry_limit", "2"]
        log = tmp_path / "runner.log"
        runner = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        try:
            watch_until(out, lambda: len(outputs(out)) >= 2)
            lost.kill()
            watch_until(out, lambda: runner.poll() is not None)
        finally:
            runner.kill() if runner.poll() is None else None
            lost.stop()
    text = log.read_text()
    assert runner.returncode == 0 and f"server {lost.url} unavailable" in text and "giving it up" in text, text
    assert outputs(out) == expected_copies(folder_run[0])


def test_mismatched_engine_is_refused_at_start(repositories, example_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repositories["cpu"], repo)
    config = repo / "ssa_engine" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "params"', 'name: "options"'))
    with EmbeddedServer(repo, log_path=tmp_path / "triton.log") as server:
        summary, stop = run([server.url], [example_dir], tmp_path / "out")
    assert stop is not None and "Regenerate the model repository" in str(stop) and "options" in str(stop)
    assert summary.done == 0


def test_image_without_annotations_on_a_server_without_sam(repositories, example_dir, tmp_path):
    """A repository generated without SAM: an image with no JSON fails with the reason, the rest
    is done."""
    repo = tmp_path / "repo"
    shutil.copytree(repositories["cpu"], repo)
    for name in ("sam_masks", "sam_encoder", "sam_decoder"):
        shutil.rmtree(repo / name)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sa_1.jpg", "sa_1.json", "sa_2.jpg"):
        shutil.copy(example_dir / name, data / name)
    with EmbeddedServer(repo, log_path=tmp_path / "triton.log") as server:
        summary, stop = run([server.url], [data], tmp_path / "out")
    assert stop is None and summary.done == 1
    assert [Path(f["file"]).name for f in summary.failures] == ["sa_2.jpg"]
    assert "has no sam_masks model" in summary.failures[0]["reason"]


def test_coco_export_round_trips_the_masks(folder_run, example_dir, tmp_path):
    from pycocotools.coco import COCO

    from ssa.coco import export_coco
    from ssa.masks import decode_rle

    semantic = tmp_path / "semantic"
    shutil.copytree(folder_run[0], semantic)
    (semantic / "broken_semantic.json").write_text("{")
    result = export_coco(semantic, tmp_path / "coco.json")
    assert (result.images, len(result.failures)) == (6, 1) and "invalid JSON" in result.failures[0]["reason"]
    assert oct((tmp_path / "coco.json").stat().st_mode & 0o777) == "0o644"
    coco = COCO(str(tmp_path / "coco.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    checked = 0
    for stem in sorted(p.stem for p in example_dir.glob("*.jpg")):
        doc = json.loads((folder_run[0] / example_dir.name / f"{stem}_semantic.json").read_text())
        image_id = doc["image"]["image_id"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(doc["annotations"])
        size = (doc["image"]["height"], doc["image"]["width"])
        for ann, src in zip(anns, doc["annotations"]):
            assert names[ann["category_id"]] == src["class_name"]
            assert ann["score"] == src["class_name_vote"]
            assert (coco.annToMask(ann).astype(bool) == decode_rle(src["segmentation"], size)).all()
            checked += 1
    assert checked == result.annotations and set(names.values()) == {
        a["class_name"] for p in folder_run[0].rglob("*_semantic.json") for a in json.loads(p.read_text())["annotations"]}


# --- model processes killed mid-run (the OOM killer's way) ------------------------------------------

def stub_pid(server_pid: int, instance: str, timeout: float = 30.0) -> int:
    from ssa.stub_health import living_instances

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = living_instances(server_pid).get(instance)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no stub process for {instance}")


def test_stubs_killed_mid_run_are_recovered(repositories, copied_examples, folder_run, tmp_path):
    """ssa_engine's stub, then a compute model's, SIGKILLed during a run on a server the runner
    does not own: no image is failed for it, and the outputs equal an uninterrupted run's."""
    server = EmbeddedServer(repositories["cpu"], log_path=tmp_path / "triton.log").start()
    out = tmp_path / "out"
    runner = start_runner(copied_examples, out, server.url, 120, tmp_path / "runner.log")
    try:
        watch_until(out, lambda: len(outputs(out)) >= 2)
        os.kill(stub_pid(server.pid, "ssa_engine_0_0"), signal.SIGKILL)
        killed_at = len(outputs(out))
        watch_until(out, lambda: len(outputs(out)) >= killed_at + 3)
        os.kill(stub_pid(server.pid, "clipseg_visual_0_0"), signal.SIGKILL)
        watch_until(out, lambda: runner.poll() is not None)
    finally:
        runner.kill() if runner.poll() is None else None
        server.stop()
    log = (tmp_path / "runner.log").read_text()
    assert runner.returncode == 0, log
    assert killed_at < 6 * COPIES and "cannot serve" in log and "serving again" in log, log
    assert "failed" not in log.replace("failed 0", "")
    assert outputs(out) == expected_copies(folder_run[0])
    assert not (out / FAILURES_FILE).exists()


def tritonserver_below(pid: int) -> int | None:
    """The pid of the tritonserver binary among `pid`'s descendants."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if args[0].endswith(b"/tritonserver") and stat[stat.rfind(")") + 2 :][0] != "Z":
                parent = int(stat[stat.rfind(")") + 2 :].split()[1])
                while parent > 1:
                    if parent == pid:
                        return int(entry)
                    try:
                        st = Path(f"/proc/{parent}/stat").read_text()
                    except OSError:
                        break
                    parent = int(st[st.rfind(")") + 2 :].split()[1])
    return None


def test_the_runner_restarts_the_server_it_owns(repositories, copied_examples, folder_run, tmp_path):
    """`ssa annotate --embedded`: its tritonserver SIGKILLed mid-run is started again and the run
    finishes with every image, byte-identical."""
    out = tmp_path / "out"
    log = tmp_path / "runner.log"
    cmd = [sys.executable, "-m", "ssa", "annotate", "--data", str(copied_examples), "--out_dir", str(out),
           "--embedded", str(repositories["cpu"]), "--in_flight", "2", "--retry_limit", "120"]
    runner = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    try:
        watch_until(out, lambda: len(outputs(out)) >= 2)
        triton = tritonserver_below(runner.pid)
        assert triton is not None
        os.kill(triton, signal.SIGKILL)
        killed_at = len(outputs(out))
        watch_until(out, lambda: runner.poll() is not None)
    finally:
        runner.kill() if runner.poll() is None else None
    text = log.read_text()
    assert runner.returncode == 0, text
    assert killed_at < 6 * COPIES and "restarted" in text, text
    assert outputs(out) == expected_copies(folder_run[0])


@pytest.mark.parametrize("message, models", [
    ("Stub process 'ssa_engine_0_0' is not healthy.", ["ssa_engine"]),
    ("SubModelError: clipseg_visual: Stub process 'clipseg_visual_0_0' is not healthy.", ["clipseg_visual"]),
    ("Stub process is not healthy.", []),
    ("Failed to obtain the health mutex.", []),
    ("invalid input: image: unreadable image", None),
    ("[StatusCode.UNAVAILABLE] failed to connect to all addresses", None),
])
def test_dead_model_processes_are_told_from_other_failures(message, models):
    from client.runner import dead_models

    assert dead_models(RuntimeError(message)) == models


# --- signals: a scheduler's preemption or time limit ---------------------------------------------

def test_sigterm_drains_the_requests_in_flight_and_a_rerun_resumes(server, copied_examples, folder_run, tmp_path):
    """SIGTERM with requests in flight: no new image is taken, those in flight finish and are
    written, the failures file and the summary are written, exit 75; a rerun finishes the rest and
    the outputs equal an uninterrupted run's byte for byte."""
    out, log = tmp_path / "out", tmp_path / "runner.log"
    runner = start_runner(copied_examples, out, server.url, 300, log, "--in_flight", "3", "--grace", "120")
    try:
        watch_until(out, lambda: len(outputs(out)) >= 2)
        at_signal = len(outputs(out))
        runner.send_signal(signal.SIGTERM)
        runner.wait(150)
    finally:
        runner.kill() if runner.poll() is None else None
    text = log.read_text()
    assert runner.returncode == 75, text
    assert "SIGTERM: draining" in text and "rerun to resume" in text, text
    finished = int(text.split(" requests in flight finished")[0].rsplit(" ", 1)[1])
    assert finished >= 1 and "0 abandoned" in text, text  # what was in flight was finished, not dropped
    after = len(outputs(out))
    assert at_signal < after < 6 * COPIES and after <= at_signal + 3  # at most in_flight more, then nothing new
    assert "done " in text  # the summary line
    assert_no_temporary_file(out)
    for name, data in outputs(out).items():
        assert data == expected_copies(folder_run[0])[name]
    summary, stop = run([server.url], [copied_examples], out, in_flight=2)
    assert stop is None and summary.skipped == after and summary.done == 6 * COPIES - after
    assert outputs(out) == expected_copies(folder_run[0])


def test_a_second_signal_stops_at_once_with_nothing_half_written(server, copied_examples, folder_run, tmp_path):
    out, log = tmp_path / "out", tmp_path / "runner.log"
    runner = start_runner(copied_examples, out, server.url, 300, log, "--grace", "600")
    try:
        watch_until(out, lambda: len(outputs(out)) >= 1)
        runner.send_signal(signal.SIGINT)  # Ctrl-C
        time.sleep(0.05)
        runner.send_signal(signal.SIGINT)
        started = time.monotonic()
        runner.wait(60)
        took = time.monotonic() - started
    finally:
        runner.kill() if runner.poll() is None else None
    text = log.read_text()
    assert runner.returncode == 75 and "SIGINT again: abandoning" in text, text
    assert took < 30  # not the 600 s grace
    assert_no_temporary_file(out)
    for name, data in outputs(out).items():  # what was written is whole and right
        assert data == expected_copies(folder_run[0])[name]


def test_two_inputs_with_the_same_stems_get_their_own_outputs(server, example_dir, folder_run, tmp_path):
    """train/sa_1.jpg and val/sa_1.jpg: two outputs (once one was annotated and the other dropped)."""
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for p in example_dir.iterdir():
            os.link(p, tmp_path / split / p.name)
    summary, stop = run([server.url], [tmp_path / "train", tmp_path / "val"], tmp_path / "out")
    assert stop is None and summary.done == 12 and not summary.failures
    for split in ("train", "val"):
        got = {p.name: p.read_bytes() for p in (tmp_path / "out" / split).glob("*_semantic.json")}
        assert got == outputs(folder_run[0])


def test_a_signal_while_waiting_for_the_servers_stops_at_once(tmp_path, example_dir):
    """SIGTERM before any server is ready (a task preempted while its server starts): exit 75 at
    once, not after --retry_limit."""
    log = tmp_path / "runner.log"
    runner = start_runner(example_dir, tmp_path / "out", f"127.0.0.1:{free_port()}", 300, log)
    try:
        deadline = time.monotonic() + 60
        while "retrying for up to" not in log.read_text():  # waiting for the server
            assert time.monotonic() < deadline and runner.poll() is None, log.read_text()
            time.sleep(0.1)
        runner.send_signal(signal.SIGTERM)
        runner.wait(30)
    finally:
        runner.kill() if runner.poll() is None else None
    text = log.read_text()
    assert runner.returncode == 75 and "before the servers were ready" in text, text


@pytest.mark.parametrize(("args", "message"), [
    (["--in_flight", "0"], "--in_flight must be at least 1"),
    (["--grace", "-5"], "--grace must be at least 0"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds"),
    (["--timeout", "nan"], "--timeout must be a positive number of seconds"),
    (["--retry_limit", "-1"], "--retry_limit must be at least 0"),
    (["--top_k", "0"], "top_k must be between 1 and 20"),
    (["--scale_small", "nan"], "scale_small must be between"),
    (["--shard", "3/2"], "--shard '3/2'"),
    (["--sam", "bogus=1"], "unknown SAM parameter"),
    (["--vocabulary", "/nonexistent/names.txt"], "cannot read vocabulary file"),
])
def test_usage_errors_exit_2_with_the_reason(args, message, example_dir, tmp_path, capsys):
    from ssa.cli import main

    code = main(["annotate", "--data", str(example_dir), "--out_dir", str(tmp_path / "out"),
                 "--url", "127.0.0.1:1", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ssa annotate: error: ") and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*_semantic.json"))


def test_a_full_disk_stops_the_run_and_a_rerun_resumes(server, example_dir, folder_run, tmp_path, monkeypatch, capsys):
    """Outputs that cannot be written (here the third JSON: ENOSPC, as on a full disk) stop the run
    with exit status 4 and the reason, nothing half-written; once there is room a rerun finishes it
    with the bytes of an uninterrupted run."""
    import errno

    import ssa.outputs
    from ssa.cli import main

    real, calls = ssa.outputs.write_json_atomic, []

    def full_after_two(path, document):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.part")
        real(path, document)

    monkeypatch.setattr(ssa.outputs, "write_json_atomic", full_after_two)
    out = tmp_path / "out"
    code = main(["annotate", "--data", str(example_dir), "--out_dir", str(out), "--url", server.url,
                 "--in_flight", "1"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "stopped: cannot write " in err and "_semantic.json (No space left on device)" in err and "rerun" in err
    written = outputs(out)
    assert len(written) == 2 and all(folder_run_bytes == written[k] for k, folder_run_bytes in
                                     outputs(folder_run[0]).items() if k in written)
    assert_no_temporary_file(out)
    monkeypatch.setattr(ssa.outputs, "write_json_atomic", real)  # room again
    summary, stop = run([server.url], [example_dir], out)
    assert stop is None and (summary.done, summary.skipped) == (4, 2)
    assert outputs(out) == outputs(folder_run[0])
