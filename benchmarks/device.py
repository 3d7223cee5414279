"""The reference pipeline and the engine in this process, side by side on one torch device: same
profile, same images, same masks, one run. Needs PyTorch and transformers only (no Triton, no
ONNX Runtime, no TensorRT), so it runs on a bare GPU machine:

    python -m benchmarks --device cuda --precision fp32,fp16

1. builds the profile (default bench: real sizes, random weights) and the sample (example photos,
   up to --masks masks each) if missing;
2. runs the reference (PyTorch, one mask at a time, as the published engine) on the device;
3. runs the engine with the export wrappers in PyTorch on the device, per precision: per-stage
   seconds (each model call timed with the device synchronised), GPU peak memory, host <-> device
   bytes per mask (counted by `ssa.device`), labels compared with the reference's on every mask
   and on the masks whose reference decisions are not near-ties (margins below the thresholds);
4. writes result.json and table.md to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from ssa.agreement import NEAR_TIE, agreement

STAGE_OF = {"oneformer": "oneformer", "blip": "caption", "clip": "clip", "clipseg": "clipseg"}
STAGES = ("oneformer", "caption", "clip", "clipseg", "pre/post-processing")


def stage_of(model: str) -> str:
    return STAGE_OF[model.split("_")[0]]


class Clock:
    """Wall-clock seconds with the device synchronised at both ends (CUDA runs asynchronously)."""

    def __init__(self, device):
        import torch

        # the benchmark's own device (cuda:N), not the current one: otherwise the timings on any GPU
        # but the current one do not wait for the work
        self.device = device
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def timed_functions(models, clock: Clock, seconds: dict) -> None:
    """Wrap every tensor function of a GraphModels so its seconds add to its stage."""
    for name, fn in list(models.fns.items()):
        def run(inputs, fn=fn, stage=stage_of(name)):
            start = clock()
            out = fn(inputs)
            seconds[stage] = seconds.get(stage, 0.0) + clock() - start
            return out
        models.fns[name] = run
    if hasattr(models, "captioner"):  # the captioner holds its own references to the text graphs
        models.captioner.prefill_fn = models.fns["blip_text_prefill"]
        models.captioner.step_fn = models.fns["blip_text_step"]


def peak_memory_mib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_reference(profile_dir: Path, loaded: list, device, nlp) -> dict:
    from ssa.reference import TorchModels, annotate_image
    from ssa.timing import StageTimer

    clock = Clock(device)
    models = TorchModels.load(profile_dir, device=str(device))
    stem, image, masks = loaded[0]
    annotate_image(image, masks.subset(range(2)), models, nlp=nlp)  # warm-up
    reset_peak(device)
    timer, labels, seconds = StageTimer(), {}, {}
    for stem, image, masks in loaded:
        start = clock()
        labels[stem] = annotate_image(image, masks, models, nlp=nlp, timer=timer)
        seconds[stem] = clock() - start
    result = {"seconds_per_image": seconds, "stage_seconds": dict(timer.seconds),
              "peak_gpu_memory_mib": peak_memory_mib(device)}
    del models
    reset_peak(device)
    return {"result": result, "labels": labels}


def run_engine(profile_dir: Path, loaded: list, device, precision: str, nlp, kernel: str) -> dict:
    from ssa.device import TRANSFERS
    from ssa.engine import annotate_image
    from ssa.preprocess import Processors
    from ssa.torch_models import torch_models

    clock = Clock(device)
    processors = Processors.load(profile_dir)
    models = torch_models(profile_dir, processors, device, precision)
    stage_seconds: dict[str, float] = {}
    timed_functions(models, clock, stage_seconds)
    stem, image, masks = loaded[0]
    annotate_image(image, masks, models, processors, nlp=nlp, kernel=kernel)  # warm-up (names cached, as in a long run)
    stage_seconds.clear()
    TRANSFERS.reset()
    reset_peak(device)
    labels, seconds = {}, {}
    for stem, image, masks in loaded:
        start = clock()
        labels[stem] = annotate_image(image, masks, models, processors, nlp=nlp, kernel=kernel)
        seconds[stem] = clock() - start
    n_masks = sum(len(m) for _, _, m in loaded)
    moved = TRANSFERS.summary()
    image_bytes, mask_bytes = moved["up"].get("image", 0), moved["up"].get("masks", 0)
    other = TRANSFERS.total() - image_bytes - mask_bytes
    result = {"seconds_per_image": seconds, "stage_seconds": stage_seconds,
              "peak_gpu_memory_mib": peak_memory_mib(device), "transfers_bytes": moved,
              "transfer_bytes_per_mask": {"image": image_bytes / n_masks, "masks": mask_bytes / n_masks,
                                          "beyond_image_and_masks": other / n_masks}}
    del models
    reset_peak(device)
    return {"result": result, "labels": labels}


def count_reference(profile_dir: Path, loaded: list, device, nlp) -> dict:
    """The reference's FLOPs per stage per image (an untimed pass under FlopCounterMode)."""
    from ssa.flops import MODEL_STAGES, ReferenceFlops
    from ssa.reference import TorchModels, annotate_image

    models = TorchModels.load(profile_dir, device=str(device))
    for model in models.models.values():  # the counter's module tracker follows tensors that need grad
        model.requires_grad_(False)
    counter = ReferenceFlops()
    with counter.counter:
        for _stem, image, masks in loaded:
            annotate_image(image, masks, models, nlp=nlp, timer=counter)
    return {s: counter.flops.get(s, 0) / len(loaded) for s in MODEL_STAGES}


def count_engine(profile_dir: Path, loaded: list, device, precision: str, nlp, kernel: str) -> dict:
    """The engine's FLOPs per stage per image: every graph call of an untimed engine run counted
    on the export wrappers at its shapes (`ssa.flops`)."""
    from ssa.engine import annotate_image
    from ssa.flops import MODEL_STAGES, GraphFlops, by_stage, counting
    from ssa.preprocess import Processors
    from ssa.torch_models import torch_models

    processors = Processors.load(profile_dir)
    models = torch_models(profile_dir, processors, device, precision)
    flops = GraphFlops(profile_dir, Path("artifacts/bench") / "flops_cache.json")
    per_graph: dict[str, int] = {}
    counting(models, flops, per_graph)
    for _stem, image, masks in loaded:
        annotate_image(image, masks, models, processors, nlp=nlp, kernel=kernel)
    flops.save()
    stages = by_stage(per_graph)
    return {s: stages.get(s, 0) / len(loaded) for s in MODEL_STAGES}


def device_peaks(device) -> dict[str, float]:
    """Dense-GEMM FLOP/s of the device per precision, measured now: fp32 and bf16 on a CPU
    (bf16 where it has the units); fp32 (no TF32), TF32, fp16 and bf16 on a GPU."""
    from ssa.flops import gemm_peak

    if device.type == "cuda":
        return {p: gemm_peak(device, p, n=8192) for p in ("fp32", "tf32", "fp16", "bf16")}
    from ssa.openvino_models import cpu_has_bf16

    return {"fp32": gemm_peak(device, "fp32"), **({"bf16": gemm_peak(device, "bf16")} if cpu_has_bf16() else {})}


def with_efficiency(run: dict, flops: dict, peak: float) -> dict:
    from benchmarks.run import efficiency

    return {**run, "efficiency": efficiency(flops, run["stage_seconds_per_image"], peak), "peak_flop_per_s": peak}


def summarise(run: dict, n_images: int, n_masks: int) -> dict:
    total = sum(run["seconds_per_image"].values())
    stages = {s: run["stage_seconds"].get(s, 0.0) / n_images for s in STAGES[:-1]}
    stages["pre/post-processing"] = total / n_images - sum(stages.values())
    return {**run, "seconds": total, "images_per_second": n_images / total, "masks_per_second": n_masks / total,
            "stage_seconds_per_image": stages}


def markdown(result: dict) -> str:
    cols = ["reference"] + [f"engine {p}" for p in result["precisions"]]
    runs = [result["reference"]] + [result["engine"][p] for p in result["precisions"]]
    rows = [("images/s", [f"{r['images_per_second']:.4f}" for r in runs]),
            ("masks/s", [f"{r['masks_per_second']:.2f}" for r in runs]),
            ("s/image", [f"{r['seconds'] / result['sample']['images']:.2f}" for r in runs])]
    for stage in STAGES:
        rows.append((f"  {stage} s/image", [f"{r['stage_seconds_per_image'][stage]:.3f}" for r in runs]))
    for stage in ("oneformer", "caption", "clip", "clipseg", "models"):
        label = "models together" if stage == "models" else f"  {stage}"
        rows.append((f"{label}: GFLOP/image", [f"{r['efficiency'][stage]['flops'] / 1e9:,.1f}" for r in runs]))
        rows.append((f"{label}: GFLOP/s (share of peak)", [
            f"{r['efficiency'][stage]['flop_per_s'] / 1e9:,.0f} ({r['efficiency'][stage]['share_of_peak']:.1%})"
            if r["efficiency"][stage]["flop_per_s"] else "" for r in runs]))
    rows.append(("engine / reference (images/s)", ["1.00x"] + [
        f"{r['images_per_second'] / result['reference']['images_per_second']:.2f}x" for r in runs[1:]]))
    rows.append(("peak GPU memory MiB", [str(r["peak_gpu_memory_mib"]) for r in runs]))
    rows.append(("host<->device bytes/mask beyond image+masks", [""] + [
        f"{r['transfer_bytes_per_mask']['beyond_image_and_masks']:.0f}" for r in runs[1:]]))
    rows.append(("host->device bytes/mask: image, masks", [""] + [
        f"{r['transfer_bytes_per_mask']['image']:.0f}, {r['transfer_bytes_per_mask']['masks']:.0f}" for r in runs[1:]]))
    rows.append(("labels equal, all masks", [""] + [
        f"{a['equal']}/{a['total']}" for a in (result["agreement"][p] for p in result["precisions"])]))
    rows.append(("labels equal, not near-ties", [""] + [
        f"{a['not_near_tie_equal']}/{a['not_near_tie_total']}" for a in (result["agreement"][p]
                                                                       for p in result["precisions"])]))
    s, t = result["sample"], result["near_tie_thresholds"]
    head = (f"`{result['command']}`: {result['machine']['device_name']}, profile `{result['profile']}`, "
            f"{s['images']} images, {s['masks']} masks ({', '.join(map(str, s['masks_per_image']))} per image), "
            f"one run each, {result['elapsed_seconds'] / 60:.1f} min in all. {near_tie_text(t)} Dense-GEMM peak "
            "measured in this run: " + ", ".join(f"{p} {v / 1e12:,.2f} TFLOP/s" for p, v in result["peaks"].items())
            + " (a column's share is against its precision's peak; the reference's against fp32). FLOPs counted "
            "with FlopCounterMode (matmuls, convolutions, attention).\n\n")
    table = "| | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n"
    table += "".join(f"| {name} | " + " | ".join(vals) + " |\n" for name, vals in rows)
    return head + table


def near_tie_text(t: dict) -> str:
    return (f"Near-tie: reference margin below {t['clip']} CLIP logits (top-k boundary and order), "
            f"{t.get('caption', '-')} BLIP logits (a caption token), {t['clipseg']:.0%} of the mask (CLIPSeg vote) "
            f"or {t['close_set']:.0%} (OneFormer votes).")


def run_sam(profile_dir: Path, loaded: list, device, precisions: list[str], points_per_side: int) -> dict:
    """SAM's automatic mask generator on each photo: the reference (SamModel, 64 points per decoder
    call) and the engine path (the exported graphs' wrappers, every point of a crop in one call) per
    precision; seconds per image, masks, and the engine's masks compared with the reference's."""
    import torch

    from ssa.params import SamParams
    from ssa.sam import compare_masks, generate_masks, sa1b_document
    from ssa.sam_models import TorchSam
    from ssa.torch_models import torch_sam

    params, clock = SamParams(points_per_side=points_per_side), Clock(device)
    out: dict = {"points_per_side": points_per_side}

    def run(models, per_call):
        docs, seconds = [], []
        reset_peak(device)
        for _, image, _ in loaded:
            start = clock()
            docs.append(sa1b_document(image.shape[:2], "", generate_masks(image, models, params, per_call)))
            seconds.append(clock() - start)
        return docs, {"seconds_per_image": sum(seconds) / len(seconds), "masks": [len(d["annotations"]) for d in docs],
                      "peak_gpu_memory_mib": peak_memory_mib(device)}

    reference = TorchSam.load(profile_dir, device)
    ref_docs, out["reference"] = run(reference, None)
    del reference
    for precision in precisions:
        models = torch_sam(profile_dir, device, precision)
        docs, out[precision] = run(models, points_per_side ** 2)
        counts = [compare_masks(r, d, params) for r, d in zip(ref_docs, docs)]
        out[precision]["agreement"] = {k: sum(c[k] for c in counts) for k in ("reference", "matched", "near_threshold")}
        out[precision]["agreement"]["unexplained"] = sum(len(c["unexplained"]) for c in counts)
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def sam_markdown(sam: dict, precisions: list[str]) -> str:
    cols = ["reference"] + [f"engine {p}" for p in precisions]
    runs = [sam["reference"]] + [sam[p] for p in precisions]
    rows = [("SAM s/image", [f"{r['seconds_per_image']:.2f}" for r in runs]),
            ("engine / reference", ["1.00x"] + [f"{sam['reference']['seconds_per_image'] / r['seconds_per_image']:.2f}x"
                                               for r in runs[1:]]),
            ("masks per image", [", ".join(map(str, r["masks"])) for r in runs]),
            ("peak GPU memory MiB", [str(r["peak_gpu_memory_mib"]) for r in runs]),
            ("masks equal / near a threshold / unexplained", [""] + [
                f"{a['matched']} / {a['near_threshold']} / {a['unexplained']} of {a['reference']}"
                for a in (sam[p]["agreement"] for p in precisions)])]
    table = (f"\nSAM's automatic mask generator ({sam['points_per_side']} points per side, segment-anything's "
             f"thresholds):\n\n| | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n")
    return table + "".join(f"| {name} | " + " | ".join(vals) + " |\n" for name, vals in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="torch device: cuda, cuda:1, cpu")
    p.add_argument("--precision", default="fp32,fp16", help="engine precisions to run (default fp32,fp16)")
    p.add_argument("--profile", default="bench", help="model profile (default %(default)s)")
    p.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    p.add_argument("--images", type=int, default=5, help="example photos (default %(default)s)")
    p.add_argument("--masks", type=int, default=100, help="masks per photo at most (default %(default)s)")
    p.add_argument("--kernel", default="auto", choices=("auto", "tensor", "pil"),
                   help="crop resize: auto = Pillow on the CPU, the exact tensor form on a GPU")
    p.add_argument("--near_tie_clip", type=float, default=0.25,
                   help="CLIP logit gap under which a top-k decision is a near-tie (default %(default)s)")
    p.add_argument("--near_tie_caption", type=float, default=NEAR_TIE["caption"],
                   help="BLIP logit gap (chosen token vs the next, smallest over the steps) under which a caption "
                        "is a near-tie (default %(default)s)")
    p.add_argument("--near_tie_vote", type=float, default=0.02,
                   help="vote margin (share of the mask) under which a CLIPSeg or OneFormer vote is a "
                        "near-tie (default %(default)s)")
    p.add_argument("--sam", type=int, default=32, metavar="POINTS_PER_SIDE",
                   help="also time SAM's automatic mask generator (SSA + SAM) at this grid; 0 skips it "
                        "(default %(default)s, segment-anything's)")
    p.add_argument("--out", type=Path, default=None, help="result folder (default artifacts/bench/device-<device>)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from ssa.torch_models import PRECISIONS

    precisions = [p for p in args.precision.split(",") if p]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        parser.error(f"--precision: {args.precision!r}; choose from {', '.join(PRECISIONS)} (comma-separated)")
    if args.images < 1 or args.masks < 1:
        parser.error("--images and --masks must be at least 1")

    from ssa.dataset import folder_items
    from ssa.device import resolve
    from ssa.examples import PHOTOS, build_examples
    from ssa.nouns import load_spacy
    from ssa.profiles import build_profile
    from ssa.runner import load_item

    started = time.perf_counter()
    try:
        device = resolve(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device: {exc}")
    out = args.out or Path("artifacts/bench") / f"device-{device.type}"
    out.mkdir(parents=True, exist_ok=True)
    profile_dir = args.models_dir / args.profile
    if not (profile_dir / "profile.json").is_file():
        print(f"building the {args.profile} profile ...", file=sys.stderr)
        build_profile(args.profile, profile_dir)
    data = out / "data" / f"{args.images}x{args.masks}"
    if not (data / "done").exists():
        build_examples(data, max_masks=args.masks, photos=PHOTOS[: args.images])
        (data / "done").touch()
    loaded = [(item.stem, *load_item(item)[::2]) for item in folder_items(data)]
    n_images, n_masks = len(loaded), sum(len(m) for _, _, m in loaded)
    nlp = load_spacy()
    thresholds = {"close_set": args.near_tie_vote, "caption": args.near_tie_caption, "clip": args.near_tie_clip,
                  "clipseg": args.near_tie_vote}

    print(f"reference on {device}: {n_images} images, {n_masks} masks ...", file=sys.stderr)
    peaks = device_peaks(device)
    ref = run_reference(profile_dir, loaded, device, nlp)
    print(f"reference on {device}: FLOPs (untimed pass) ...", file=sys.stderr)
    ref_flops = count_reference(profile_dir, loaded, device, nlp)
    engine, agree = {}, {}
    for precision in precisions:
        print(f"engine on {device}, {precision} ...", file=sys.stderr)
        run = run_engine(profile_dir, loaded, device, precision, nlp, args.kernel)
        flops = count_engine(profile_dir, loaded, device, precision, nlp, args.kernel)
        engine[precision] = with_efficiency(summarise(run["result"], n_images, n_masks), flops,
                                            peaks.get(precision, peaks["fp32"]))
        agree[precision] = agreement(ref["labels"], run["labels"], thresholds)
    result = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": args.profile, "precisions": precisions, "kernel": args.kernel,
        "machine": {"device": str(device), "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
                    "torch": torch.__version__, "python": platform.python_version(), "cores": os.cpu_count()},
        "sample": {"images": n_images, "masks": n_masks, "masks_per_image": [len(m) for _, _, m in loaded]},
        "near_tie_thresholds": thresholds, "peaks": peaks,
        "reference": with_efficiency(summarise(ref["result"], n_images, n_masks), ref_flops, peaks["fp32"]),
        "engine": engine, "agreement": agree,
    }
    if args.sam > 0:
        from ssa.profiles import SAM

        if not (profile_dir / SAM / "config.json").is_file():
            build_profile(args.profile, profile_dir, roles=(SAM,))
        print(f"SAM on {device}: reference, then the engine path ...", file=sys.stderr)
        result["sam"] = run_sam(profile_dir, loaded, device, precisions, args.sam)
    result["elapsed_seconds"] = time.perf_counter() - started
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result) + (sam_markdown(result["sam"], precisions) if "sam" in result else "")
    (out / "table.md").write_text(table)
    print(table)
    print(f"result: {out / 'result.json'}, {out / 'table.md'}")
    return 0
