"""`ssa`: the command line of the SSA engine. `ssa <command> --help` explains each command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssa.params import EngineParams, bounds_text
from ssa.profiles import PROFILES

DEFAULT_MODELS_DIR = Path("artifacts/models")


def add_params(parser: argparse.ArgumentParser) -> None:
    d = EngineParams()
    g = parser.add_argument_group("engine parameters (the published engine's defaults; range in brackets)")
    g.add_argument("--top_k", type=int, default=d.top_k,
                   help=f"proposals per mask [{bounds_text('top_k')}] (default %(default)s)")
    g.add_argument("--scale_small", type=float, default=d.scale_small,
                   help=f"CLIP crop scale [{bounds_text('scale_small')}] (default %(default)s)")
    g.add_argument("--scale_large", type=float, default=d.scale_large,
                   help=f"BLIP crop scale [{bounds_text('scale_large')}] (default %(default)s)")
    g.add_argument("--scale_huge", type=float, default=d.scale_huge,
                   help=f"CLIPSeg crop scale [{bounds_text('scale_huge')}] (default %(default)s)")
    g.add_argument("--caption_max_length", type=int, default=d.caption_max_length,
                   help=f"caption length cap in tokens, decoder start token included "
                        f"[{bounds_text('caption_max_length')}] (default %(default)s)")


def add_vocabulary(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("vocabulary (your own class names)")
    g.add_argument("--vocabulary", type=Path, default=None, metavar="FILE",
                   help="UTF-8 file, one class name per line ('#' lines are comments); 'name: synonym, "
                        "synonym' scores a class with all its names, and a candidate equal to a synonym "
                        "becomes the class. Merged into every mask's candidates before CLIP's top-k "
                        "(at most 10,000 names)")
    g.add_argument("--vocabulary_only", action="store_true",
                   help="use only the vocabulary's names as candidates (no OneFormer or caption names): CLIP's "
                        "top-k over the list, CLIPSeg's vote among that top-k")


def vocabulary_from(args: argparse.Namespace):
    """The vocabulary the options name (read and checked before any work starts), or None."""
    from ssa.vocabulary import Vocabulary

    if args.vocabulary is None:
        if args.vocabulary_only:
            raise ValueError("--vocabulary_only needs --vocabulary FILE")
        return None
    return Vocabulary.read(args.vocabulary, only=args.vocabulary_only)


def sam_params_from(pairs: list[str]):
    """SamParams from KEY=VALUE options (segment-anything's names); ValueError naming the bad one."""
    import json

    from ssa.params import SamParams

    values = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq:
            raise ValueError(f"--sam {pair!r}: expected KEY=VALUE, e.g. points_per_side=16")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"--sam {pair!r}: {raw!r} is not a number") from None
    return SamParams.from_dict(values)


def params_from(args: argparse.Namespace) -> EngineParams:
    return EngineParams(top_k=args.top_k, scale_small=args.scale_small, scale_large=args.scale_large,
                        scale_huge=args.scale_huge, caption_max_length=args.caption_max_length)


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="tiny", choices=PROFILES,
                        help="model profile: tiny (random, small; tests), bench (random, real sizes), "
                             "light/full (real checkpoints) (default %(default)s)")
    parser.add_argument("--models_dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="where profiles live, one folder each (default %(default)s)")
    parser.add_argument("--snapshot_dir", type=Path, default=None,
                        help="light/full: a folder of local checkpoints named like their hub ids "
                             "(e.g. <dir>/openai/clip-vit-base-patch32), used instead of the hub")


def profile_dir(args: argparse.Namespace) -> Path:
    """The profile's folder, built first if it does not exist yet."""
    from ssa.profiles import build_profile

    path = args.models_dir / args.profile
    if not (path / "profile.json").is_file():
        print(f"building the {args.profile} profile in {path} ...", file=sys.stderr)
        build_profile(args.profile, path, snapshot_dir=args.snapshot_dir,
                      log=lambda m: print(m, file=sys.stderr))
    return path


def cmd_models(args: argparse.Namespace) -> int:
    from ssa.profiles import ALL_ROLES, build_profile, download_snapshots

    roles = tuple(args.roles.split(",")) if args.roles else ALL_ROLES
    if args.download:
        download_snapshots(args.profile, args.download, roles)
        print(f"checkpoints of {args.profile} in {args.download}; offline: ssa models --profile {args.profile} "
              f"--snapshot_dir {args.download}")
        return 0
    build_profile(args.profile, args.models_dir / args.profile, snapshot_dir=args.snapshot_dir, roles=roles,
                  seed=args.seed)
    print(f"profile {args.profile} written to {args.models_dir / args.profile}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from ssa.examples import build_examples

    paths = build_examples(args.out, max_masks=args.max_masks)
    print(f"{len(paths)} images with SA-1B annotations written to {args.out}")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from ssa.dataset import folder_listing, input_name
    from ssa.device import resolve
    from ssa.layout import check_layout
    from ssa.reference import TorchModels, annotate_image
    from ssa.runner import run_in_process

    params = params_from(args)
    vocabulary = vocabulary_from(args)
    check_layout(args.out_dir)
    listing = folder_listing(args.data_dir, input_name(args.data_dir))  # the runner's layout
    try:
        device = resolve(args.device)
    except (RuntimeError, ValueError) as exc:
        print(f"ssa reference: --device: {exc}", file=sys.stderr)
        return 2
    models = TorchModels.load(profile_dir(args), device=str(device))
    summary = run_in_process(listing.items, args.out_dir,
                             lambda item, image, masks: annotate_image(image, masks, models, params,
                                                                       vocabulary=vocabulary),
                             engine="reference (PyTorch, one mask at a time)", profile=models.profile, params=params,
                             save_img=args.save_img, overwrite=args.overwrite, unusable=listing.unusable,
                             vocabulary=vocabulary,
                             runtime={"target": "reference", "backend": "pytorch", "precision": "fp32",
                                      "device": str(device)})
    return 1 if summary.failures else 0


def peak_memory_mib() -> float | None:
    """This process's peak resident memory (Linux VmHWM), or None where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cmd_annotate(args: argparse.Namespace) -> int:
    import contextlib

    from client.runner import (
        EXIT_FAILURES,
        EXIT_INTERRUPTED,
        EXIT_MISMATCH,
        EXIT_SERVERS_DOWN,
        EXIT_UNWRITABLE,
        Interrupted,
        ListingStopped,
        OutputUnwritable,
        RunnerConfig,
        ServerMismatch,
        annotate_dataset,
    )
    from ssa.dataset import Shard, check_inputs, listings
    from ssa.layout import check_layout

    check_inputs(args.data)
    check_layout(args.out_dir)
    if args.in_flight < 1:
        raise ValueError("--in_flight must be at least 1")
    if not args.grace >= 0:
        raise ValueError("--grace must be at least 0")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not args.retry_limit >= 0:
        raise ValueError("--retry_limit must be at least 0")
    cfg = RunnerConfig(urls=args.url or ["127.0.0.1:8001"], out_dir=args.out_dir, params=params_from(args),
                       vocabulary=vocabulary_from(args), sam_params=sam_params_from(args.sam),
                       force_sam=args.force_sam,
                       in_flight=args.in_flight, shard=Shard.parse(args.shard), save_img=args.save_img,
                       overwrite=args.overwrite, retry_limit=args.retry_limit, request_timeout=args.timeout,
                       grace=args.grace)
    with contextlib.ExitStack() as stack:
        if args.embedded:
            from model_repository.server import EmbeddedServer

            if args.url:
                raise ValueError("--embedded starts its own server: give --url or --embedded, not both")
            print(f"starting the embedded tritonserver with {args.embedded} ...", file=sys.stderr)
            server = stack.enter_context(EmbeddedServer(args.embedded))
            cfg.urls, cfg.owned = [server.url], {server.url: server}  # restarted if it or a model dies
        summary, stop = annotate_dataset(cfg, listings(args.data, cfg.shard, exclude=(args.out_dir,)))
    if args.summary:
        from ssa.sa1b import write_json_atomic

        write_json_atomic(args.summary, {**summary.to_dict(), "in_flight": args.in_flight, "servers": len(cfg.urls),
                                         "stopped": str(stop) if stop else None, "peak_memory_mib": peak_memory_mib()})
    if stop:
        print(f"ssa annotate: {stop}", file=sys.stderr)
        if isinstance(stop, Interrupted):
            return EXIT_INTERRUPTED
        if isinstance(stop, OutputUnwritable):
            return EXIT_UNWRITABLE
        if isinstance(stop, ListingStopped):  # in failures.json too: what was listed is done
            return EXIT_FAILURES
        return EXIT_MISMATCH if isinstance(stop, ServerMismatch) else EXIT_SERVERS_DOWN
    return EXIT_FAILURES if summary.failures else 0


def check_run(args: argparse.Namespace) -> None:
    """The --out_dir and --data of `add_run`: FileNotFoundError / ValueError before any work."""
    from ssa.dataset import check_inputs

    if not args.out_dir.is_dir():
        raise FileNotFoundError(f"{args.out_dir}: no such folder")
    if args.data:
        check_inputs(args.data)


def cmd_status(args: argparse.Namespace) -> int:
    from ssa.layout import format_status, run_status

    check_run(args)
    print(format_status(run_status(args.out_dir, args.data, args.tasks)))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ssa.layout import format_status, merge

    check_run(args)
    coco = None if args.no_coco else (args.coco or args.out_dir / "coco.json")
    status, failures, left = merge(args.out_dir, args.data, coco)
    print(format_status(status))
    if failures:
        print(f"failures of every task: {failures} ({len(status.failures)} files)")
    if coco is not None:
        print(f"COCO file: {coco}")
    if args.data:
        if left:
            print(f"{status.total.left} images neither done nor failed, listed in {left} (rerun the tasks to "
                  f"finish them)", file=sys.stderr)
            return 1
        print("every image is done or failed")
    return 0


def cmd_coco(args: argparse.Namespace) -> int:
    from ssa.coco import export_coco

    result = export_coco(args.semantic_dir, args.out)
    print(f"{args.out}: {result.images} images, {result.annotations} annotations, {result.categories} categories"
          + (f"; {len(result.failures)} files skipped:" if result.failures else ""))
    for f in result.failures:
        print(f"  {f['file']}: {f['reason']}", file=sys.stderr)
    return 1 if result.failures else 0


def add_run(parser: argparse.ArgumentParser, data_use: str) -> None:
    """--out_dir and --data of a finished or running `ssa annotate` run (status, merge)."""
    parser.add_argument("--out_dir", type=Path, required=True, help="the run's output folder")
    parser.add_argument("--data", "--data_dir", dest="data", type=Path, nargs="+", default=None, metavar="PATH",
                        help=f"the run's inputs, as given to ssa annotate ({data_use})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssa",
        description="Semantic Segment Anything: give every SAM mask of an image a class name and "
                    "class proposals (OneFormer close-set names, BLIP caption noun phrases, CLIP top-k, "
                    "CLIPSeg vote).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="build a model profile folder (random weights or real checkpoints)",
                       description="Write a profile's five models with their processors in save_pretrained form.")
    add_profile(p)
    p.add_argument("--roles", default="", help="comma-separated subset of roles to build (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of random profiles (default %(default)s)")
    p.add_argument("--download", type=Path, default=None, metavar="DIR",
                   help="light/full, on a machine with internet: fetch every checkpoint of the profile and "
                        "OneFormer's class-info files into DIR, in the layout --snapshot_dir reads (then build "
                        "offline, HF_HUB_OFFLINE=1, with --snapshot_dir DIR)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("examples", help="build the SA-1B-style example set from scikit-image's photographs",
                       description="Real photographs with masks from classical segmentation at several "
                                   "granularities, written as <stem>.jpg + <stem>.json (SA-1B, COCO RLE).")
    p.add_argument("--out", type=Path, default=Path("artifacts/examples"), help="output folder (default %(default)s)")
    p.add_argument("--max_masks", type=int, default=150, help="masks per image at most (default %(default)s)")
    p.set_defaults(func=cmd_examples)

    p = sub.add_parser("reference", help="annotate a folder with the reference pipeline (PyTorch, one mask at a time)",
                       description="Annotate every <stem>.jpg + <stem>.json of --data_dir with the reference "
                                   "pipeline, writing <stem>_semantic.json (and --save_img PNGs) to --out_dir.")
    p.add_argument("--data_dir", type=Path, required=True, help="folder of images and SA-1B JSON files")
    p.add_argument("--out_dir", type=Path, required=True, help="output folder")
    p.add_argument("--save_img", action="store_true", help="also write <stem>_semantic.png, masks with class names")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    p.add_argument("--device", default="cpu", help="torch device of the models: cpu (default), cuda, cuda:1")
    add_profile(p)
    add_params(p)
    add_vocabulary(p)
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser(
        "annotate", help="annotate a dataset through Triton servers over gRPC (the batch runner)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Annotate a dataset through one or more tritonservers' ssa_engine, keeping requests in flight\n"
                    "on each, writing <stem>_semantic.json (and --save_img PNGs) to --out_dir.\n\n"
                    "Outputs mirror the inputs: <out_dir>/<input name>/<sub-folder or tar stem>/<stem>_semantic.json.\n\n"
                    "Resumable: images whose output exists are skipped, so rerun after any stop. Files that\n"
                    "cannot be annotated are listed with the reason in <out_dir>/failures.json\n"
                    "(failures_<i>of<N>.json with --shard), rewritten during the run.\n\n"
                    "SIGTERM / SIGINT (a scheduler's preemption or time limit, Ctrl-C) drains the run: no new image,\n"
                    "the requests in flight finish within --grace seconds, then it exits with status 75. A second\n"
                    "signal stops at once. Nothing is half-written either way.\n\n"
                    "Exit status: 0 all done; 1 some files failed, or listing the inputs failed part-way (what was\n"
                    "listed is done; rerun to resume); 2 usage error, or a server whose ssa_engine\n"
                    "does not match this client; 3 servers unreachable for longer than --retry_limit (rerun\n"
                    "to resume); 4 outputs could not be written (disk full, permissions: fix, then rerun to\n"
                    "resume); 75 interrupted by a signal (rerun to resume).",
        epilog="examples:\n"
               "  ssa annotate --embedded artifacts/repository/tiny-cpu --data artifacts/examples --out_dir out\n"
               "  ssa annotate --url node1:8001 --url node2:8001 --data /data/sa1b/sa_000000.tar --out_dir out\n"
               "  ssa annotate --url localhost:8001 --shard 3/8 --data /data/sa1b --out_dir /out\n"
               "  ssa annotate --embedded artifacts/repository/tiny-cpu --data my_photos/ --out_dir out --save_img"
               "   # SSA + SAM")
    p.add_argument("--data", "--data_dir", dest="data", type=Path, nargs="+", required=True, metavar="PATH",
                   help="folders of <stem>.jpg + <stem>.json (and/or SA-1B .tar shards, read in place), .tar "
                        "shards, or list files (one image path per line, or image<TAB>json). An image without "
                        "a <stem>.json gets SAM's masks from the server first (SSA + SAM)")
    p.add_argument("--out_dir", type=Path, required=True, help="output folder")
    p.add_argument("--url", action="append", default=[], metavar="HOST:PORT",
                   help="gRPC address of a tritonserver; repeat for several (default 127.0.0.1:8001)")
    p.add_argument("--embedded", type=Path, default=None, metavar="REPOSITORY",
                   help="start the embedded tritonserver (no Docker) with this generated repository for the run")
    p.add_argument("--in_flight", type=int, default=2,
                   help="requests kept in flight per server (default %(default)s; raise it for servers with "
                        "several ssa_engine instances or GPUs)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="take only shard I of N, so N runners (a Slurm array's tasks) split one dataset without "
                        "overlap: a folder's images by a hash of their output path, each .tar shard whole by a "
                        "hash of its name (a task opens only its own tars) (default %(default)s: everything)")
    p.add_argument("--retry_limit", type=float, default=300.0, metavar="SECONDS",
                   help="how long a server may stay unreachable or not ready (restarting) before the run gives "
                        "it up (default %(default)s)")
    from client.runner import DEFAULT_GRACE

    p.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                   help="after SIGTERM / SIGINT, how long the requests in flight may take to finish before they "
                        "are abandoned (default %(default)s: under the 30 s Slurm and Kubernetes give by default "
                        "between SIGTERM and SIGKILL)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per-request timeout; a timed-out request is retried like an unreachable server "
                        "(default: none)")
    p.add_argument("--save_img", action="store_true", help="also write <stem>_semantic.png, masks with class names")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    p.add_argument("--force_sam", action="store_true",
                   help="SSA + SAM: take SAM's masks (the server's sam_masks model) for every image, even where a "
                        "<stem>.json exists; images without one always get SAM's masks. The masks are written "
                        "to <out_dir>/<stem>.json (SA-1B form) before the labels")
    p.add_argument("--sam", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of SAM's automatic mask generator (segment-anything's names and defaults: "
                        "points_per_side=32, pred_iou_thresh=0.88, stability_score_thresh=0.95, "
                        "stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7, "
                        "crop_overlap_ratio=0.3413, crop_n_points_downscale_factor=1, min_mask_region_area=0); "
                        "repeat for several")
    p.add_argument("--summary", type=Path, default=None, metavar="FILE",
                   help="also write the run's summary (counts, seconds, images/s, masks/s) as JSON to FILE")
    add_params(p)
    add_vocabulary(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("status", help="how far a run has got: done / failed / left per input shard and task",
                       description="Count a run's outputs and failures from its files (works while its tasks "
                                   "run, and after): per input folder or tar shard, per task (--shard i/N, from "
                                   "the failures files' names or --tasks), and in all. With --data, also what "
                                   "is left (every image of the inputs neither done nor failed).")
    add_run(p, "to count what is left")
    p.add_argument("--tasks", type=int, default=None, metavar="N",
                   help="the run's task count (--shard i/N), for the per-task rows (default: from the failures files)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("merge", help="gather a many-task run: every task's failures, one COCO file, what is left",
                       description="At the end of a many-task run (the Slurm array's dependent job): every "
                                   "task's failures into <out_dir>/failures_all.json (once each), every output "
                                   "into one COCO instances file, and with --data the images neither done nor "
                                   "failed into <out_dir>/left.txt. Exit status 1 when images are left.")
    add_run(p, "to find what is left")
    p.add_argument("--coco", type=Path, default=None, metavar="FILE",
                   help="the COCO file to write (default <out_dir>/coco.json)")
    p.add_argument("--no_coco", action="store_true", help="write no COCO file (for SA-1B: export shards with ssa coco)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("coco", help="gather a folder of <stem>_semantic.json into one COCO instances file",
                       description="Write one COCO instances JSON (categories from the class names found, RLE "
                                   "segmentations, score = CLIPSeg vote share of the class name) from every "
                                   "<stem>_semantic.json of --semantic_dir; loadable with pycocotools' COCO API.")
    p.add_argument("--semantic_dir", type=Path, required=True,
                   help="folder of <stem>_semantic.json files (its sub-folders too: a run's output folder)")
    p.add_argument("--out", type=Path, required=True, help="the COCO JSON file to write")
    p.set_defaults(func=cmd_coco)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"ssa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssa {args.command}: interrupted after {time.perf_counter() - start:.0f}s; rerun to resume",
              file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
