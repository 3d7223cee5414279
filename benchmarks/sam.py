"""`python -m benchmarks.sam`: SSA + SAM on the CPU target, against the reference, in one run.

On the same photos (no annotation files) and the same profile:
1. reference: SAM's automatic mask generator in PyTorch, 64 points per decoder call (as its
   authors run it), seconds per image;
2. Triton: the `sam_masks` model of the embedded tritonserver (cpu target), seconds per image,
   and its masks compared with the reference's (matched / near a threshold / unexplained);
3. the whole SSA + SAM: `ssa annotate` on the folder of photos through the same server (SAM's
   masks, then every mask labelled), seconds per image and masks per image.

Writes result.json and table.md to --out. Random-weight profiles (bench) give SAM outputs of
random models: how many masks clear the default thresholds says nothing about real photos,
so the mask counts are printed with the seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def ensure_sam(profile: str, models_dir: Path, export_dir: Path) -> Path:
    """The profile folder, with its SAM role built and exported if missing."""
    from ssa.profiles import SAM, build_profile

    profile_dir = models_dir / profile
    if not (profile_dir / SAM / "config.json").is_file():
        print(f"building the {profile} profile's SAM ...", file=sys.stderr)
        build_profile(profile, profile_dir, roles=(SAM,), log=lambda m: print(m, file=sys.stderr))
    manifest = export_dir / "manifest.json"
    models = json.loads(manifest.read_text())["models"] if manifest.is_file() else {}
    missing = [m for m in ("sam_encoder", "sam_decoder") if m not in models]
    if missing:
        from export.core import export_profile, quiet

        print(f"exporting {missing} (checked against PyTorch) ...", file=sys.stderr)
        with quiet():
            export_profile(profile_dir, export_dir, missing, log=lambda m: print(m, file=sys.stderr))
    return profile_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="bench", help="model profile (default %(default)s)")
    parser.add_argument("--images", type=int, default=2, help="photos (default %(default)s)")
    parser.add_argument("--sam", action="append", default=[], metavar="KEY=VALUE",
                        help="a SAM parameter (segment-anything's names; default: its defaults)")
    parser.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--export_dir", type=Path, default=None, help="ONNX export (default artifacts/onnx/<profile>)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/bench/sam-<profile>)")
    args = parser.parse_args(argv)

    from client.runner import RunnerConfig, annotate_dataset
    from model_repository.generate import generate_repository
    from model_repository.server import EmbeddedServer
    from ssa.cli import sam_params_from
    from ssa.dataset import listings
    from ssa.examples import PHOTOS, build_examples
    from ssa.images import load_image
    from ssa.sam import compare_masks, generate_masks, sa1b_document
    from ssa.sam_models import TorchSam

    params = sam_params_from(args.sam)
    out = args.out or Path("artifacts/bench") / f"sam-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)
    export_dir = args.export_dir or Path("artifacts/onnx") / args.profile
    profile_dir = ensure_sam(args.profile, args.models_dir, export_dir)
    examples = out / "examples"
    if not (examples / "done").exists():
        build_examples(examples, max_masks=1, photos=PHOTOS[: args.images])
        (examples / "done").touch()
    photos = out / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir()
    for p in sorted(examples.glob("*.jpg"))[: args.images]:
        shutil.copy(p, photos / p.name)
    stems = sorted(p.stem for p in photos.glob("*.jpg"))

    print(f"reference: SAM in PyTorch on {len(stems)} photos ...", file=sys.stderr)
    sam = TorchSam.load(profile_dir)
    reference, ref_seconds = {}, []
    for stem in stems:
        image = load_image(photos / f"{stem}.jpg")
        start = time.perf_counter()
        reference[stem] = sa1b_document(image.shape[:2], f"{stem}.jpg", generate_masks(image, sam, params))
        ref_seconds.append(time.perf_counter() - start)
    del sam

    repository = generate_repository(export_dir, profile_dir, out / "repository", "cpu", sam_params=params)
    import tritonclient.grpc as grpcclient

    from client.engine_client import SAM_MODEL, sam_inputs

    triton_seconds, comparisons = [], {}
    with EmbeddedServer(repository, log_path=out / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.url)
        print("Triton: sam_masks on the same photos ...", file=sys.stderr)
        for stem in stems:
            start = time.perf_counter()
            result = client.infer(SAM_MODEL, sam_inputs((photos / f"{stem}.jpg").read_bytes()))
            triton_seconds.append(time.perf_counter() - start)
            doc = json.loads(result.as_numpy("annotations").reshape(-1)[0])
            comparisons[stem] = compare_masks(reference[stem], doc, params)
        print("SSA + SAM: ssa annotate on the folder of photos ...", file=sys.stderr)
        whole_out = out / "ssa_sam"
        shutil.rmtree(whole_out, ignore_errors=True)
        cfg = RunnerConfig(urls=[server.url], out_dir=whole_out, sam_params=params, in_flight=1, progress=False)
        summary, stop = annotate_dataset(cfg, listings([photos]))
    if stop is not None or summary.failures:
        print(f"SSA + SAM run failed: {stop or summary.failures}", file=sys.stderr)
        return 1

    masks = [len(reference[s]["annotations"]) for s in stems]
    totals = {k: sum(c[k] for c in comparisons.values()) for k in ("reference", "triton", "matched", "near_threshold")}
    unexplained = [f"{s}: {u}" for s, c in comparisons.items() for u in c["unexplained"]]
    result = {
        "profile": args.profile, "images": len(stems), "sam_params": params.to_dict(),
        "reference_sam_seconds_per_image": statistics.median(ref_seconds),
        "triton_sam_seconds_per_image": statistics.median(triton_seconds),
        "ssa_sam_seconds_per_image": summary.seconds / max(1, summary.done),
        "masks_per_image": masks, "labelled_masks": summary.masks, "masks_compared": totals,
        "unexplained": unexplained, "reference_seconds": ref_seconds, "triton_seconds": triton_seconds,
    }
    table = "\n".join([
        "| figure | reference (PyTorch) | Triton (cpu target) |", "|---|---|---|",
        f"| SAM s/image (median of {len(stems)}) | {result['reference_sam_seconds_per_image']:.2f} | "
        f"{result['triton_sam_seconds_per_image']:.2f} |",
        f"| whole SSA + SAM s/image (`ssa annotate`, SAM + labels) | | {result['ssa_sam_seconds_per_image']:.2f} |",
        f"| masks per image (SAM) | {masks} | |",
        f"| masks equal (IoU >= 0.99, bbox +-1) / near a threshold / unexplained | "
        f"{totals['matched']} / {totals['near_threshold']} / {len(unexplained)} of {totals['reference']} | |",
    ]) + "\n"
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(table)
    print(table)
    print(f"written: {out / 'result.json'}, {out / 'table.md'}")
    return 0 if not unexplained else 1


if __name__ == "__main__":
    sys.exit(main())
