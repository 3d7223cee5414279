"""`python -m benchmarks.repeats`: is any crop computed twice? Per image and per model, the crops
that are pixel-identical to another crop of the same image at the same scale (the same clamped box:
a crop is the image inside its box, so the same box is the same pixels), on the example set's masks
and on SAM's masks of the example photos.

BLIP's crop is the box at `scale_large`, CLIP's at `scale_small`, CLIPSeg's visual pass at
`scale_huge` (its decoder depends on the mask's prompts too, so only the visual pass could be
shared). A model stage's saving is its repeated crops over all its crops: the engine would compute
each distinct crop once and fan its result out only if that exceeds --threshold (5%).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssa.params import EngineParams

MODELS = {"blip (caption)": "scale_large", "clip": "scale_small", "clipseg (visual)": "scale_huge"}


def repeated_crops(bboxes, size: tuple[int, int], params: EngineParams = EngineParams()) -> dict[str, int]:
    """Per model: how many of the image's crops repeat an earlier crop's box."""
    from ssa.geometry import crop_box

    return {model: len(bboxes) - len({tuple(crop_box(b, getattr(params, scale), size)) for b in bboxes})
            for model, scale in MODELS.items()}


def count(documents: list[tuple[str, tuple[int, int], list]]) -> dict:
    """{source: {"images", "crops", per model {"repeated", "share"}}} over (stem, size, bboxes)."""
    crops = sum(len(b) for _, _, b in documents)
    repeated = {m: 0 for m in MODELS}
    for _stem, size, bboxes in documents:
        for m, n in repeated_crops(bboxes, size).items():
            repeated[m] += n
    return {"images": len(documents), "crops": crops,
            "models": {m: {"repeated": n, "share": n / crops if crops else 0.0} for m, n in repeated.items()}}


def sa1b_boxes(data_dir: Path) -> list[tuple[str, tuple[int, int], list]]:
    out = []
    for path in sorted(data_dir.glob("*.json")):
        doc = json.loads(path.read_text())
        size = (int(doc["image"]["height"]), int(doc["image"]["width"]))
        out.append((path.stem, size, [a["bbox"] for a in doc["annotations"]]))
    return out


def sam_boxes(profile_dir: Path, data_dir: Path, images: int | None = None) -> list[tuple[str, tuple[int, int], list]]:
    """SAM's automatic masks of each photo of `data_dir` (the profile's SAM, PyTorch, CPU)."""
    from ssa.images import load_image
    from ssa.sam import generate_masks
    from ssa.torch_models import torch_sam

    models = torch_sam(profile_dir)
    out = []
    for path in sorted(p for p in data_dir.iterdir() if p.suffix in (".jpg", ".png"))[:images]:
        image = load_image(path)
        out.append((path.stem, image.shape[:2], [a["bbox"] for a in generate_masks(image, models)]))
    return out


def markdown(result: dict) -> str:
    lines = ["| masks | images | crops | " + " | ".join(f"{m}: repeated (share)" for m in MODELS) + " |",
             "|---" * (3 + len(MODELS)) + "|"]
    for source, r in result["sources"].items():
        lines.append(f"| {source} | {r['images']} | {r['crops']} | " + " | ".join(
            f"{r['models'][m]['repeated']} ({r['models'][m]['share']:.1%})" for m in MODELS) + " |")
    worst = max((r["models"][m]["share"] for r in result["sources"].values() for m in MODELS), default=0.0)
    verdict = (f"Largest saving {worst:.1%}, " + ("above" if worst > result["threshold"] else "below")
               + f" the {result['threshold']:.0%} threshold: "
               + ("compute each distinct crop once." if worst > result["threshold"] else
                  "each crop is computed as it comes (sharing would not pay for its bookkeeping)."))
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.repeats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, action="append", default=None,
                   help="folders of images + SA-1B JSON (default: the example set, built if missing)")
    p.add_argument("--sam_profile", default="tiny",
                   help="profile whose SAM makes masks of the example photos ('' to skip; default %(default)s)")
    p.add_argument("--sam_images", type=int, default=None, help="photos SAM makes masks of (default: all)")
    p.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=Path("artifacts/bench/repeats"))
    args = p.parse_args(argv)
    from ssa.examples import build_examples
    from ssa.profiles import build_profile

    args.out.mkdir(parents=True, exist_ok=True)
    folders = args.data
    if not folders:
        examples = args.out / "examples"
        if not (examples / "done").exists():
            build_examples(examples)
            (examples / "done").touch()
        folders = [examples]
    sources = {f"{d} (SA-1B JSON)": count(sa1b_boxes(d)) for d in folders}
    if args.sam_profile:
        profile_dir = args.models_dir / args.sam_profile
        if not (profile_dir / "profile.json").is_file():
            build_profile(args.sam_profile, profile_dir)
        print(f"SAM ({args.sam_profile}) on the photos of {folders[0]} ...", file=sys.stderr)
        sources[f"SAM ({args.sam_profile} profile) on the photos of {folders[0]}"] = count(
            sam_boxes(profile_dir, folders[0], args.sam_images))
    result = {"threshold": args.threshold, "sources": sources}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
