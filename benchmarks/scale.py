"""What a many-task run costs each task before any labelling, measured on SA-1B's scale where a
machine can hold it and computed from those figures where it cannot.

- Listing one SA-1B-sized shard: a synthetic uncompressed tar of `--images` small images, each
  with its SA-1B JSON (SA-1B shards hold about 11,000 image + JSON pairs): seconds to index it, and
  the memory the index takes (the listing of one shard is all a runner holds of its inputs).
- Skipping finished work: an output folder where `--done` images are done (their
  `<key>_semantic.json` exist), and the runner's own selection (`client.runner.Run.select`: the
  `--shard` hash and the output check of every image) over them, for one task and for one of
  `--tasks` tasks.
- From those: a 1,000-shard run on N tasks. A task opens only its own tars (a tar is one task's
  work), so each of N tasks lists about 1,000 / N shards and checks their images.

    python -m benchmarks.scale [--images 11000] [--done 100000] [--tasks 1000] [--out artifacts/bench/scale]

Prints a table and writes result.json to --out.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import shutil
import tarfile
import time
import tracemalloc
from pathlib import Path

SA1B_SHARDS = 1000
SA1B_IMAGES_PER_SHARD = 11_000


def _jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _document(i: int) -> bytes:
    return json.dumps({"image": {"image_id": i, "width": 16, "height": 16, "file_name": f"sa_{i}.jpg"},
                       "annotations": [{"id": i, "bbox": [0, 0, 4, 4], "area": 16,
                                        "segmentation": {"size": [16, 16], "counts": "04<0000"}}]}).encode()


def write_tar(path: Path, images: int) -> None:
    """An uncompressed tar laid out as SA-1B's: sa_<i>.jpg and sa_<i>.json at its top."""
    jpeg = _jpeg()
    with tarfile.open(path, "w") as tar:
        for i in range(1, images + 1):
            for name, data in ((f"sa_{i}.jpg", jpeg), (f"sa_{i}.json", _document(i))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def time_listing(tar: Path, repeats: int = 3) -> tuple[float, float, int]:
    """(median seconds to index the tar, MiB the index takes, items)."""
    from ssa.dataset import tar_listing

    seconds = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        listing = tar_listing(tar)
        seconds.append(time.perf_counter() - start)
        del listing
    gc.collect()
    tracemalloc.start()
    listing = tar_listing(tar)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return sorted(seconds)[len(seconds) // 2], current / (1 << 20), len(listing.items)


def time_skipping(root: Path, done: int, tasks: int) -> dict[str, float]:
    """Seconds the runner's selection takes over `done` finished images (a folder of that many
    images, every output present): as the only task, and as one task of `tasks`."""
    from client.runner import Run, RunnerConfig
    from ssa.dataset import Shard, folder_listing

    data, out = root / "images", root / "out"
    data.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jpeg = _jpeg()
    for i in range(1, done + 1):
        (data / f"sa_{i}.jpg").write_bytes(jpeg)
        (out / "images" / f"sa_{i}_semantic.json").write_bytes(b"{}")
    start = time.perf_counter()
    listing = folder_listing(data, "images")
    list_seconds = time.perf_counter() - start
    result = {"list_folder_s": list_seconds}
    for name, shard in (("skip_all_s", Shard()), ("skip_one_task_s", Shard(0, tasks))):
        run = Run(RunnerConfig(urls=["unused:1"], out_dir=out, shard=shard, progress=False), iter(()))
        start = time.perf_counter()
        todo = run.select(listing)
        result[name] = time.perf_counter() - start
        assert not todo and not run.summary.failures, (len(todo), run.summary.failures[:3])
        result[name.replace("_s", "_skipped")] = run.summary.skipped
        run.bar.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=SA1B_IMAGES_PER_SHARD, help="images in the synthetic shard")
    parser.add_argument("--done", type=int, default=100_000, help="finished images to skip")
    parser.add_argument("--tasks", type=int, default=SA1B_SHARDS, help="tasks of the run the figures are for")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/scale"))
    args = parser.parse_args(argv)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tar = work / "sa_000000.tar"
    start = time.perf_counter()
    write_tar(tar, args.images)
    print(f"synthetic shard: {args.images:,} images + JSON, {tar.stat().st_size / (1 << 20):.0f} MiB, "
          f"written in {time.perf_counter() - start:.0f}s")
    list_s, index_mib, items = time_listing(tar)
    assert items == args.images
    skip = time_skipping(work / "skip", args.done, args.tasks)
    per_image_skip = skip["skip_all_s"] / args.done
    shards_per_task = max(1, SA1B_SHARDS // args.tasks)
    before = shards_per_task * (list_s + SA1B_IMAGES_PER_SHARD * per_image_skip)
    result = {"images_per_shard": args.images, "list_shard_s": list_s, "index_mib": index_mib,
              "done": args.done, **skip, "tasks": args.tasks, "shards_per_task": shards_per_task,
              "before_labelling_per_task_s": before}
    rows = [
        (f"index one shard of {args.images:,} images (median of 3)", f"{list_s:.2f} s"),
        ("memory of that index", f"{index_mib:.1f} MiB"),
        (f"list a folder of {args.done:,} images", f"{skip['list_folder_s']:.2f} s"),
        (f"skip {args.done:,} finished images (resume, one task)", f"{skip['skip_all_s']:.2f} s"),
        (f"skip them as task 0 of {args.tasks:,} (--shard: hash, no output check for others')",
         f"{skip['skip_one_task_s']:.2f} s"),
        (f"1,000-shard run on {args.tasks:,} tasks: per task before labelling ({shards_per_task} shard(s) "
         f"listed, every image of them checked; a resumed task)", f"{before:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
