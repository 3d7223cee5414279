"""The output folder of a run over many tasks: its layout, how far the run has got (`ssa status`),
and gathering the tasks' results at the end (`ssa merge`).

Layout (`ssa.dataset` gives every image its key): `<out_dir>/<key>_semantic.json` (+ `.png`, and
SAM's `<key>.json`), keys mirroring the inputs, so each input folder and each tar shard has its
own output folder. At the top of the output folder: the folders of the inputs and one failures
file per task (`failures.json`, or `failures_<i>of<N>.json` with `--shard i/N`), rewritten during
the run, so what a running task has failed so far is on disk.

Everything here reads the files only (outputs and failures files), so it works while the tasks
run, after they end, and from any machine that sees the shared file system.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ssa.dataset import Item, Listing, listings, task_of
from ssa.outputs import SEMANTIC_SUFFIX, is_done, semantic_files

TASK_FAILURES = re.compile(r"^failures(?:_(\d+)of(\d+))?\.json$")
MERGED_FAILURES = "failures_all.json"
LEFT_FILE = "left.txt"
STALE_PART_SECONDS = 600.0  # a temporary output older than this is a killed runner's (a write takes milliseconds)


def check_layout(out_dir: str | Path) -> None:
    """ValueError when `out_dir` holds outputs in the flat layout of ssa-triton 0.1
    (`<out_dir>/<stem>_semantic.json`); this version never writes one at the top of the output
    folder, so such a file is always an earlier version's. They are not used or moved silently:
    the stems of two inputs may have shared one of them."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    with os.scandir(out_dir) as entries:
        flat = next((e.name for e in entries if e.name.endswith(SEMANTIC_SUFFIX) and not e.name.startswith(".")), None)
    if flat is not None:
        raise ValueError(
            f"{out_dir} holds outputs in the flat layout of ssa-triton 0.1 (e.g. {flat} at its top); this version "
            f"writes <out_dir>/<input name>/.../<stem>_semantic.json. Use another --out_dir, or move the flat "
            f"files into their input's folder (one input folder DATA: mkdir {out_dir}/DATA && mv "
            f"{out_dir}/*_semantic.* {out_dir}/DATA/) and rerun to resume")


def remove_stale_parts(folder: str | Path, older_than: float = STALE_PART_SECONDS) -> int:
    """Remove the temporary files (`.<name>.<random>.part`) a killed runner left in `folder`; only
    those older than `older_than` seconds, so another task's write in progress is never touched.
    Returns how many were removed."""
    removed = 0
    now = time.time()
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(".") and e.name.endswith(".part") and e.is_file(follow_symlinks=False):
                    try:
                        if now - e.stat().st_mtime > older_than:
                            os.unlink(e.path)
                            removed += 1
                    except FileNotFoundError:
                        pass
    except (FileNotFoundError, NotADirectoryError):
        pass
    return removed


def failures_files(out_dir: str | Path) -> dict[str, list[dict[str, str]]]:
    """{file name: its entries} of every task's failures file at the top of `out_dir`."""
    found = {}
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return found
    for path in sorted(out_dir.iterdir()):
        if TASK_FAILURES.match(path.name) and path.is_file():
            try:
                entries = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: unreadable failures file ({exc})") from exc
            found[path.name] = [e for e in entries if isinstance(e, dict) and "file" in e]
    return found


def task_count(names: Iterable[str]) -> int | None:
    """N of the tasks' failures files `failures_<i>of<N>.json`, when they name one."""
    counts = {int(m.group(2)) for m in map(TASK_FAILURES.match, names) if m and m.group(2)}
    return max(counts) if counts else None


@dataclass
class Counts:
    images: int = 0
    done: int = 0
    failed: int = 0

    @property
    def left(self) -> int:
        return max(0, self.images - self.done - self.failed)

    def add(self, other: Counts) -> None:
        self.images += other.images
        self.done += other.done
        self.failed += other.failed


@dataclass
class Status:
    """How far a run has got. `by_folder`: per input folder or tar shard (its output folder);
    `by_task`: per `--shard i/N` task (when N is known); `other_failures`: failed files that are
    not an image of the inputs (a damaged tar, a JSON with no image). The images left are
    counted, not kept (a fresh SA-1B run has 11 million): `run_status(on_left=...)` sees each."""

    by_folder: dict[str, Counts] = field(default_factory=dict)
    by_task: dict[int, Counts] = field(default_factory=dict)
    total: Counts = field(default_factory=Counts)
    failures: list[dict[str, str]] = field(default_factory=list)
    other_failures: list[dict[str, str]] = field(default_factory=list)
    tasks: int | None = None
    with_inputs: bool = False


def merged_failures(out_dir: str | Path) -> list[dict[str, str]]:
    """Every task's failures, once each (a problem of an input every task lists, such as an
    unreadable folder, is in each task's file), sorted by file."""
    seen, out = set(), []
    for entries in failures_files(out_dir).values():
        for e in entries:
            key = (e["file"], e.get("reason", ""))
            if key not in seen:
                seen.add(key)
                out.append({"file": e["file"], "reason": e.get("reason", "")})
    return sorted(out, key=lambda e: (e["file"], e["reason"]))


def run_status(out_dir: str | Path, inputs: list[str | Path] | None = None, tasks: int | None = None,
               on_left: Callable[[Item], None] | None = None) -> Status:
    """The run's progress from its files. With `inputs`, every image of them is counted done
    (its output exists), failed (named in a failures file) or left (`on_left` is called with
    each); without, the outputs found and the failures only (what is left is unknown)."""
    out_dir = Path(out_dir)
    files = failures_files(out_dir)
    status = Status(failures=merged_failures(out_dir), tasks=tasks or task_count(files), with_inputs=bool(inputs))
    failed_files = {e["file"] for e in status.failures}
    if not inputs:
        for path in semantic_files(out_dir):
            folder = path.parent.relative_to(out_dir).as_posix()
            status.by_folder.setdefault(folder, Counts()).done += 1
            status.total.done += 1
        status.total.failed = len(status.failures)
        return status
    matched: set[str] = set()  # failed files that are an image of the inputs or its JSON (at most the failures)
    for listing in listings(inputs, exclude=(out_dir,)):
        _count_listing(listing, out_dir, failed_files, matched, status, on_left)
    status.other_failures = [e for e in status.failures if e["file"] not in matched]
    return status


def _count_listing(listing: Listing, out_dir: Path, failed_files: set[str], matched: set[str],
                   status: Status, on_left: Callable[[Item], None] | None) -> None:
    counts = status.by_folder.setdefault(listing.folder, Counts())
    seen = set()
    for item in listing.items:
        if item.key in seen:  # a second image of one output path: failed by the runner, counted once
            continue
        seen.add(item.key)
        names = {str(item.image)} | ({str(item.annotations)} if item.annotations is not None else set())
        failed = names & failed_files
        matched.update(failed)
        one = Counts(images=1)
        if is_done(out_dir, item.key):
            one.done = 1
        elif failed:
            one.failed = 1
        elif on_left is not None:
            on_left(item)
        counts.add(one)
        status.total.add(one)
        if status.tasks:
            status.by_task.setdefault(task_of(item.shard_key, status.tasks), Counts()).add(one)


def format_status(status: Status) -> str:
    """The table `ssa status` prints."""
    def row(name: str, c: Counts) -> str:
        if not status.with_inputs:
            return f"{name:<40} {c.done:>9}"
        return f"{name:<40} {c.images:>9} {c.done:>9} {c.failed:>9} {c.left:>9}"

    header = f"{'':<40} {'done':>9}" if not status.with_inputs else \
        f"{'':<40} {'images':>9} {'done':>9} {'failed':>9} {'left':>9}"
    lines = [header]
    for folder, c in sorted(status.by_folder.items()):
        lines.append(row(folder or ".", c))
    if status.by_task:
        lines.append("")
        for i, c in sorted(status.by_task.items()):
            lines.append(row(f"task {i}/{status.tasks}", c))
    lines.append("")
    lines.append(row("all", status.total))
    if status.with_inputs:
        if status.other_failures:
            lines.append(f"{len(status.other_failures)} other files failed (not an image of the inputs: a damaged "
                         f"tar, an annotation file with no image, ...)")
    else:
        lines.append(f"failed: {len(status.failures)} files (give --data to count what is left)")
    return "\n".join(lines)


def merge(out_dir: str | Path, inputs: list[str | Path] | None, coco_path: str | Path | None) -> tuple[Status, Path | None, Path | None]:
    """Gather a run's results: every task's failures into `<out_dir>/failures_all.json`, the
    outputs into one COCO file (`coco_path`, when given), and with `inputs` the images neither done
    nor failed into `<out_dir>/left.txt` (one image per line; removed when none is left).
    Returns (status, the failures file or None, the left file or None)."""
    from ssa.atomic import file_mode, write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    left_path = out_dir / LEFT_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{LEFT_FILE}.", suffix=".part", dir=out_dir)
    try:  # the images left are written as they are found, never all held (and the file is whole or absent)
        with os.fdopen(fd, "w", encoding="utf-8") as left:
            status = run_status(out_dir, inputs, on_left=lambda item: left.write(f"{item.image}\n"))
        if status.total.left:
            os.chmod(tmp, file_mode())
            os.replace(tmp, left_path)
        else:
            os.unlink(tmp)
            left_path.unlink(missing_ok=True)
            left_path = None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    failures_path = out_dir / MERGED_FAILURES
    if status.failures:
        write_json_atomic(failures_path, status.failures)
    else:
        failures_path.unlink(missing_ok=True)
        failures_path = None
    if coco_path is not None:
        from ssa.coco import export_coco

        export_coco(out_dir, coco_path)
    return status, failures_path, left_path
