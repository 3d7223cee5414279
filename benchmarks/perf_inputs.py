"""Input-data files for perf_analyzer, one per model of a generated repository.

    python -m benchmarks.perf_inputs --repository artifacts/repository/light-gpu --data artifacts/examples
    bash benchmarks/perf_analyzer.sh   # then, where perf_analyzer is installed (Triton SDK image)

Every file holds one batch item per entry (perf_analyzer repeats it for `-b`): `ssa_engine` gets
the example images and their SA-1B documents; the compute models get real preprocessed crops and
tokenised names where they take them, and random tensors of the right shape for intermediate
features (BLIP image embeddings, CLIPSeg activations). Tensors are base64 of their raw bytes.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np
import torch

NAMES = ["person", "a red car", "building", "tree", "sky", "grass"]
PROMPTS = 3  # proposals per mask (top_k) for the CLIPSeg decoder


def tensor(value: np.ndarray) -> dict:
    """One perf_analyzer input entry (without the batch axis)."""
    value = np.ascontiguousarray(value)
    return {"b64": base64.b64encode(value.tobytes()).decode("ascii"), "shape": list(value.shape)}


def make_inputs(repository: Path, data_dir: Path, out: Path, images: int = 2) -> list[Path]:
    from ssa.dataset import folder_items
    from ssa.images import load_image
    from ssa.preprocess import Processors, token_groups

    manifest = json.loads((repository / "manifest.json").read_text())["export"]["models"]
    processors = Processors.load(repository / "ssa_engine" / "1" / "processors")
    items = [i for i in folder_items(data_dir) if i.annotations][:images]
    if not items:
        raise FileNotFoundError(f"{data_dir}: no image with an SA-1B JSON")
    photos = [load_image(i.image) for i in items]
    rng = np.random.default_rng(0)

    def dims(model: str, name: str, **sizes) -> list[int]:
        spec = next(t for t in manifest[model]["inputs"] + manifest[model]["outputs"] if t["name"] == name)
        return [d if isinstance(d, int) else sizes[d] for d in spec["dims"][1:]]

    def random(model: str, name: str, **sizes) -> dict:
        return tensor(rng.standard_normal(dims(model, name, **sizes)).astype(np.float32))

    data: dict[str, list[dict]] = {}
    data["ssa_engine"] = [{"image": {"b64": base64.b64encode(i.image.read_bytes()).decode("ascii"), "shape": [1]},
                           "annotations": {"content": [i.annotations.read_text()], "shape": [1]}} for i in items]
    images = [torch.from_numpy(p) for p in photos]  # the engine's own device preprocessing, on the CPU
    plans = processors.plans

    def pixels(role: str, image) -> np.ndarray:
        return plans[role].pixels(image).numpy()

    for ds in ("coco", "ade20k"):
        task = processors.task_inputs(ds, torch.device("cpu"))[0].numpy()
        data[f"oneformer_{ds}"] = [{"pixel_values": tensor(pixels(f"oneformer_{ds}", im)), "task_inputs": tensor(task)}
                                   for im in images]
    data["blip_vision"] = [{"pixel_values": tensor(pixels("blip", im))} for im in images]
    data["clip_image"] = [{"pixel_values": tensor(pixels("clip", im))} for im in images]
    data["clipseg_visual"] = [{"pixel_values": tensor(torch.nn.functional.interpolate(
        plans["clipseg"].pixels(im)[None], size=(512, 512), mode="bilinear", align_corners=False)[0].numpy())}
        for im in images]
    for model, encode in (("clip_text", processors.clip_text), ("clipseg_text", processors.clipseg_text)):
        tokens = encode(NAMES)  # each name at the token length the engine sends it at
        cut = {int(j): n for n, rows in token_groups(tokens["attention_mask"]) for j in rows}
        data[model] = [{k: tensor(v[j, : cut[j]]) for k, v in tokens.items()} for j in range(len(NAMES))]
    embeds = next(t for t in manifest["blip_text_prefill"]["inputs"] if t["name"] == "image_embeds")["dims"][1:]
    data["blip_caption"] = [{"image_embeds": tensor(rng.standard_normal(embeds).astype(np.float32)),
                             "max_length": tensor(np.array([20], np.int32))}]
    acts = [t["name"] for t in manifest["clipseg_visual"]["outputs"]]
    data["clipseg_decoder"] = [{**{a: random("clipseg_visual", a) for a in acts},
                                "cond": random("clipseg_decoder", "cond", prompts=PROMPTS)}]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model, entries in data.items():
        path = out / f"{model}.json"
        path.write_text(json.dumps({"data": entries}))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf_inputs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="a generated model repository")
    parser.add_argument("--data", type=Path, default=Path("artifacts/examples"), help="images + SA-1B JSON")
    parser.add_argument("--out", type=Path, default=Path("artifacts/perf_inputs"), help="default %(default)s")
    parser.add_argument("--images", type=int, default=2, help="images per file (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = make_inputs(args.repository, args.data, args.out, args.images)
    except (FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} input files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
