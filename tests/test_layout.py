"""The output layout of a many-task run (no server needed): outputs mirror the inputs, two inputs
never share an output path, an earlier version's flat folder is refused, a tar is one task's work,
and `ssa status` / `ssa merge` count and gather a run from its files."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from ssa.dataset import Shard, check_inputs, listings, safe_parts
from ssa.layout import check_layout, format_status, merge, remove_stale_parts, run_status


def touch_image(path: Path, annotations: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not decoded here")
    if annotations:
        path.with_suffix(".json").write_text("{}")


def keys(inputs, shard=None) -> list[str]:
    return [item.key for listing in listings(inputs, shard) for item in listing.items]


def test_outputs_mirror_the_inputs_and_never_collide(tmp_path):
    data = tmp_path / "dataset"
    touch_image(data / "train" / "0001.jpg")
    touch_image(data / "val" / "0001.jpg")  # the same stem in another folder: its own output path
    touch_image(data / "top.jpg")
    touch_image(data / "train" / "deeper" / "0001.png")
    with tarfile.open(data / "sa_000000.tar", "w") as tar:
        for name in ("0001.jpg", "0001.json", "inner/0002.jpg", "inner/0002.json"):
            touch_image(tmp_path / "members" / name)
        tar.add(tmp_path / "members" / "0001.jpg", arcname="0001.jpg")
        tar.add(tmp_path / "members" / "0001.json", arcname="0001.json")
        tar.add(tmp_path / "members" / "inner" / "0002.jpg", arcname="inner/0002.jpg")
    (data / ".hidden").mkdir()
    touch_image(data / ".hidden" / "x.jpg")
    assert keys([data]) == ["dataset/top", "dataset/sa_000000/0001", "dataset/sa_000000/inner/0002",
                            "dataset/train/0001", "dataset/train/deeper/0001", "dataset/val/0001"]
    # a tar given itself, and a list file: their own top folder
    assert keys([data / "sa_000000.tar"]) == ["sa_000000/0001", "sa_000000/inner/0002"]
    listed = tmp_path / "mine.txt"
    listed.write_text("dataset/train/0001.jpg\ndataset/val/0001.jpg\n../outside.jpg\n")
    assert keys([listed]) == ["mine/dataset/train/0001", "mine/dataset/val/0001", "mine/__/outside"]


def test_inputs_that_would_share_a_folder_are_refused(tmp_path):
    touch_image(tmp_path / "a" / "images" / "1.jpg")
    touch_image(tmp_path / "b" / "images" / "1.jpg")
    with pytest.raises(ValueError, match="share a folder.*images/"):
        check_inputs([tmp_path / "a" / "images", tmp_path / "b" / "images"])
    check_inputs([tmp_path / "a" / "images", tmp_path / "b"])  # distinct names: fine


def test_a_tar_beside_a_folder_of_its_name_is_reported(tmp_path):
    data = tmp_path / "d"
    touch_image(data / "x" / "1.jpg")
    with tarfile.open(data / "x.tar", "w") as tar:
        tar.add(data / "x" / "1.jpg", arcname="1.jpg")
    found = list(listings([data]))
    errors = [listing.error for listing in found if listing.error is not None]
    assert len(errors) == 1 and "shares its output folder d/x/" in errors[0].problem
    assert keys([data]) == ["d/x/1"]


@pytest.mark.parametrize(("name", "parts"), [("a/b/c", ["a", "b", "c"]), ("/abs/x", ["abs", "x"]),
                                             ("../../x", ["__", "__", "x"]), ("./a//b", ["a", "b"])])
def test_paths_inside_inputs_stay_inside_the_output_folder(name, parts):
    assert safe_parts(name) == parts


def test_a_task_opens_only_its_own_tars(tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    for i in range(8):  # not tars at all: opening one gives an error listing
        (data / f"sa_{i:06d}.tar").write_bytes(b"garbage")
    seen = []
    for task in range(3):
        found = list(listings([data], Shard(task, 3)))
        opened = [Path(listing.source).name for listing in found if listing.source.endswith(".tar")]
        assert all(f"shards/{Path(n).stem}" in Shard(task, 3) for n in opened)
        seen += opened
    assert sorted(seen) == sorted(f"sa_{i:06d}.tar" for i in range(8))  # each opened by exactly one task


def test_flat_output_folder_of_an_earlier_version_is_refused(tmp_path):
    check_layout(tmp_path / "missing")  # nothing yet: fine
    out = tmp_path / "out"
    (out / "examples").mkdir(parents=True)
    (out / "examples" / "sa_1_semantic.json").write_text("{}")
    check_layout(out)  # the new layout: fine
    (out / "sa_1_semantic.json").write_text("{}")
    with pytest.raises(ValueError, match="flat layout.*mkdir"):
        check_layout(out)


def test_only_stale_temporary_files_are_removed(tmp_path):
    old, fresh = tmp_path / ".a_semantic.json.x1.part", tmp_path / ".b_semantic.json.x2.part"
    old.write_text("{")
    fresh.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_parts(tmp_path) == 1 and not old.exists() and fresh.exists()


def test_status_and_merge_count_a_run_from_its_files(tmp_path):
    data = tmp_path / "data"
    for stem in ("a", "b", "c", "d"):
        touch_image(data / "one" / f"{stem}.jpg")
    touch_image(data / "two" / "e.jpg")
    (data / "two" / "orphan.json").write_text("{}")
    out = tmp_path / "out"
    (out / "data" / "one").mkdir(parents=True)
    (out / "data" / "one" / "a_semantic.json").write_text("{}")  # done
    (out / "data" / "one" / "b_semantic.json").write_text("{}")  # done
    failures = [{"file": str(data / "one" / "c.jpg"), "reason": "unreadable image"},
                {"file": str(data / "two" / "orphan.json"), "reason": "annotation file with no image beside it"}]
    (out / "failures_0of2.json").write_text(json.dumps(failures[:1]))
    (out / "failures_1of2.json").write_text(json.dumps(failures))  # a shared problem listed by both tasks
    status = run_status(out, [data])
    assert status.tasks == 2
    assert (status.total.images, status.total.done, status.total.failed, status.total.left) == (5, 2, 1, 2)
    one, two = status.by_folder["data/one"], status.by_folder["data/two"]
    assert (one.done, one.failed, one.left, two.left) == (2, 1, 1, 1)
    assert sum(c.images for c in status.by_task.values()) == 5
    assert [e["file"] for e in status.other_failures] == [str(data / "two" / "orphan.json")]
    text = format_status(status)
    assert "data/one" in text and "task 1/2" in text and "1 other files failed" in text
    without = run_status(out)  # from the outputs alone: done and failed, nothing about what is left
    assert (without.total.done, without.total.failed) == (2, 2) and "give --data" in format_status(without)
    status, failures_path, left_path = merge(out, [data], None)
    assert json.loads(failures_path.read_text()) == sorted(failures, key=lambda e: e["file"])  # each once
    assert sorted(left_path.read_text().split()) == [str(data / "one" / "d.jpg"), str(data / "two" / "e.jpg")]
    for stem in ("d",):
        (out / "data" / "one" / f"{stem}_semantic.json").write_text("{}")
    shutil.copy(out / "failures_1of2.json", out / "failures.json")
    (out / "failures.json").write_text(json.dumps(failures + [{"file": str(data / "two" / "e.jpg"), "reason": "x"}]))
    status, _, left_path = merge(out, [data], None)
    assert status.total.left == 0 and left_path is None and not (out / "left.txt").exists()


def test_output_folder_inside_the_input_and_link_loops_are_not_walked(tmp_path):
    data = tmp_path / "photos"
    touch_image(data / "a.jpg")
    touch_image(data / "out" / "photos" / "a_semantic.png", annotations=False)  # an earlier run's picture
    touch_image(data / "sub" / "b.jpg")
    (data / "sub" / "loop").symlink_to(data)  # a link back up: walked once, not forever
    touch_image(data / "out" / "photos" / "a.jpg")  # a copy of an input in the output folder
    assert keys([data]) == ["photos/a", "photos/out/photos/a", "photos/sub/b"]  # the picture is no input
    found = [item.key for listing in listings([data], exclude=(data / "out",)) for item in listing.items]
    assert found == ["photos/a", "photos/sub/b"]


def test_names_too_long_for_their_outputs_are_found_before_writing(tmp_path):
    """`output_name_problem` finds every name the atomic write could not create (a stem with no
    room for `_semantic.json` and the temporary suffix, a folder name over NAME_MAX, a whole path
    over PATH_MAX) and passes the longest that can: that one is written."""
    from ssa.atomic import write_bytes_atomic
    from ssa.outputs import SEMANTIC_SUFFIX, is_done, output_name_problem

    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = "s" * (name_max - len(f".{SEMANTIC_SUFFIX}.12345678.part"))
    assert output_name_problem(tmp_path, f"a/{longest}") is None
    write_bytes_atomic(tmp_path / "a" / f"{longest}{SEMANTIC_SUFFIX}", b"{}")
    assert is_done(tmp_path, f"a/{longest}")
    assert "name too long for its outputs" in output_name_problem(tmp_path, f"a/{longest}s")
    assert "a stem of 240 bytes" in output_name_problem(tmp_path, "ü" * 120)  # bytes, not characters
    assert "output folder name too long" in output_name_problem(tmp_path, f"{'d' * (name_max + 1)}/x")
    deep = "/".join(["d" * 200] * 25)  # each name fits, the path is over 4096 bytes
    assert "output path too long" in output_name_problem(tmp_path, f"{deep}/x")
    assert not is_done(tmp_path, "x" * 5000)  # False, not ENAMETOOLONG
