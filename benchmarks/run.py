"""The reference pipeline and the Triton engine side by side: same profile, same images, same
masks, one run.

    python -m benchmarks --profile bench

1. builds the sample (photos of the example set, masks from classical segmentation) and records it;
2. runs the reference pipeline (PyTorch, one mask at a time) in this process, with per-stage times;
3. starts the embedded tritonserver and runs the batch runner (`ssa annotate`, a separate process)
   `--repeats` times with 1 request in flight; per-stage times come from Triton's statistics;
4. sweeps requests in flight and masks per image (scaling curves);
5. writes `result.json`, `table.md` and the plots (PNG + SVG) to --out, and prints the table.

Peak memory: the reference is this process; the client is the runner process; the server is the
tritonserver process tree (sampled). Labels: every class_name and class_proposals compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULTS_NOTE = """
The defaults (3 photos x 8 masks, 3 Triton repeats, 1/2/4 in flight, 10/25/50 masks per image)
finish in about 15 minutes with the bench profile on a 2-core machine.
"""
STAGES = ("oneformer", "caption", "clip", "clipseg", "pre/post-processing")
# Triton models per stage; what ssa_engine spends beyond its sub-model requests is pre/post-processing
MODEL_STAGE = {"oneformer_coco": "oneformer", "oneformer_ade20k": "oneformer", "blip_vision": "caption",
               "blip_caption": "caption", "clip_image": "clip", "clip_text": "clip", "clipseg_visual": "clipseg",
               "clipseg_text": "clipseg", "clipseg_decoder": "clipseg"}


def process_tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class PeakMemory(threading.Thread):
    """Samples a process tree's resident memory until stopped; `.peak` in bytes."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, process_tree_rss(self.pid))
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def prepare_data(out: Path, images: int, masks: int, scaling: list[int]) -> dict[str, Path]:
    """The comparison set (`images` photos, at most `masks` masks each) and one folder per scaling point."""
    from ssa.examples import PHOTOS, build_examples

    dirs = {"compare": out / "data" / f"compare_{images}x{masks}"}
    if not (dirs["compare"] / "done").exists():
        build_examples(dirs["compare"], max_masks=masks, photos=PHOTOS[:images])
        (dirs["compare"] / "done").touch()
    for n in scaling:
        d = dirs[f"masks_{n}"] = out / "data" / f"masks_{n}"
        if not (d / "done").exists():
            build_examples(d, max_masks=n, photos=PHOTOS[:1])
            (d / "done").touch()
    return dirs


def mask_counts(data_dir: Path) -> list[int]:
    return [len(json.loads(p.read_text())["annotations"]) for p in sorted(data_dir.glob("*.json"))]


def run_reference(profile_dir: Path, data_dir: Path, repeats: int, device: str = "cpu") -> dict:
    from ssa.dataset import folder_items
    from ssa.reference import TorchModels, annotate_image
    from ssa.runner import load_item
    from ssa.timing import StageTimer

    models = TorchModels.load(profile_dir, device=device)
    loaded = [(item.stem, *load_item(item)) for item in folder_items(data_dir)]
    runs, labels, timer = [], {}, StageTimer()
    for _ in range(repeats):
        start = time.perf_counter()
        with timer("total"):
            for stem, image, _doc, masks in loaded:
                labels[stem] = annotate_image(image, masks, models, timer=timer)
        runs.append(time.perf_counter() - start)
    n_images = len(loaded) * repeats
    stages = {s: timer.seconds[s] / n_images for s in STAGES[:-1]}
    stages["pre/post-processing"] = timer.seconds["total"] / n_images - sum(stages.values())
    return {"runs_seconds": runs, "stage_seconds_per_image": stages, "labels": labels,
            "peak_memory_mib": mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


def run_runner(url: str, data_dir: Path, out_dir: Path, in_flight: int) -> dict:
    """One `ssa annotate` process over `data_dir`; its summary and its peak memory."""
    summary = out_dir / "summary.json"
    cmd = [sys.executable, "-m", "ssa", "annotate", "--url", url, "--data", str(data_dir), "--out_dir", str(out_dir),
           "--in_flight", str(in_flight), "--overwrite", "--summary", str(summary), "--retry_limit", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ssa annotate failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(summary.read_text())
    result["client_peak_memory_mib"] = result.pop("peak_memory_mib")  # its own VmHWM, measured after exec
    return result


def model_stats(client) -> dict[str, dict[str, int]]:
    out = {}
    for m in client.get_inference_statistics(as_json=False).model_stats:
        s = m.inference_stats
        out[m.name] = {"requests": s.success.count, "executions": m.execution_count, "request_ns": s.success.ns,
                       "compute_ns": s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns}
    return out


def triton_stages(before: dict, after: dict, images: int) -> tuple[dict, dict]:
    """(seconds per image per stage, requests per image per model) between two statistics snapshots."""
    delta = {name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]} for name in after}
    stages = dict.fromkeys(STAGES, 0.0)
    for name, stage in MODEL_STAGE.items():
        stages[stage] += delta.get(name, {}).get("compute_ns", 0) / 1e9 / images
    sub_requests = sum(delta.get(name, {}).get("request_ns", 0) for name in MODEL_STAGE) / 1e9 / images
    stages["pre/post-processing"] = delta["ssa_engine"]["compute_ns"] / 1e9 / images - sub_requests
    requests = {name: d["executions"] / images for name, d in sorted(delta.items()) if d["requests"]}
    return stages, requests


def compare_labels(reference: dict, out_dir: Path) -> dict:
    equal = total = 0
    for stem, labels in reference.items():
        doc = json.loads((out_dir / f"{stem}_semantic.json").read_text())
        for lab, ann in zip(labels, doc["annotations"], strict=True):
            total += 1
            equal += (lab.class_name, lab.class_proposals) == (ann["class_name"], ann["class_proposals"])
    return {"equal": equal, "total": total}


def ensure_repository(profile: str, models_dir: Path, repository: Path | None) -> tuple[Path, Path]:
    """(profile dir, cpu repository), building the profile, its export and the repository if missing."""
    from model_repository.generate import generate_repository
    from ssa.profiles import build_profile

    profile_dir = models_dir / profile
    if not (profile_dir / "profile.json").is_file():
        print(f"building the {profile} profile ...", file=sys.stderr)
        build_profile(profile, profile_dir)
    export_dir = Path("artifacts/onnx") / profile
    if repository is None:
        repository = Path("artifacts/repository") / f"{profile}-cpu"
        if not (export_dir / "manifest.json").is_file():
            from export.core import export_profile

            print(f"exporting the {profile} profile to ONNX (checked against PyTorch) ...", file=sys.stderr)
            export_profile(profile_dir, export_dir, log=lambda m: print(m, file=sys.stderr))
        # labelling only: the figures compare the labelling engine (SAM: python -m benchmarks.sam)
        generate_repository(export_dir, profile_dir, repository, "cpu", threads=os.cpu_count() or 2, include_sam=False)
    return profile_dir, repository


def markdown(result: dict) -> str:
    ref, tri = result["reference"], result["triton"]
    best = max(result["in_flight_sweep"], key=lambda r: r["images_per_second"])
    rows = [
        ("images/s", f"{ref['images_per_second']:.4f}", f"{tri['images_per_second']:.4f}",
         f"{best['images_per_second']:.4f} ({best['in_flight']} in flight)"),
        ("masks/s", f"{ref['masks_per_second']:.3f}", f"{tri['masks_per_second']:.3f}",
         f"{best['masks_per_second']:.3f}"),
        ("s/image", f"{ref['seconds_per_image']:.2f}", f"{tri['seconds_per_image']:.2f}",
         f"{1 / best['images_per_second']:.2f}"),
    ]
    for stage in STAGES:
        rows.append((f"  {stage} s/image", f"{ref['stage_seconds_per_image'][stage]:.2f}",
                     f"{tri['stage_seconds_per_image'][stage]:.2f}", ""))
    rows += [
        ("peak memory, client MiB", f"{ref['peak_memory_mib']:.0f} (reference process)",
         f"{tri['client_peak_memory_mib']:.0f}", ""),
        ("peak memory, server MiB", "", "n/a (external server)" if tri["server_peak_memory_mib"] is None
         else f"{tri['server_peak_memory_mib']:.0f}", ""),
        ("Triton / reference (images/s)", "1.00", f"{result['ratio']:.2f}x", f"{result['ratio_best']:.2f}x"),
        ("labels equal (class_name + class_proposals)", "",
         f"{result['labels']['equal']}/{result['labels']['total']}", ""),
    ]
    s = result["sample"]
    head = (f"`{result['command']}`: profile `{result['profile']}`, {s['images']} images with "
            f"{s['masks']} masks ({', '.join(map(str, s['masks_per_image']))} per image), "
            f"{result['machine']['cores']} cores, reference x{result['reference_repeats']} and Triton "
            f"x{result['repeats']} (median), {result['elapsed_seconds'] / 60:.1f} min in all.\n\n")
    table = "| | reference | Triton, 1 in flight | Triton, best |\n|---|---|---|---|\n"
    table += "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    return head + table


def plots(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sc = result["masks_scaling"]
    ax.plot([r["masks"] for r in sc], [r["seconds_per_image"] for r in sc], "o-", label="Triton ssa_engine")
    ref = result["reference"]
    ax.plot([result["sample"]["masks"] / result["sample"]["images"]], [ref["seconds_per_image"]], "s",
            color="tab:red", label="reference (measured sample)")
    ax.set(xlabel="masks per image", ylabel="seconds per image", title=f"{result['profile']} profile, "
           f"{result['machine']['cores']} CPU cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"seconds_per_image_vs_masks.{ext}", dpi=110)
        written.append(out / f"seconds_per_image_vs_masks.{ext}")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sw = result["in_flight_sweep"]
    ax.plot([r["in_flight"] for r in sw], [r["images_per_second"] for r in sw], "o-")
    ax.set(xlabel="requests in flight", ylabel="images per second", xticks=[r["in_flight"] for r in sw],
           title=f"Triton throughput, {result['sample']['masks'] // result['sample']['images']} masks per image")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"throughput_vs_in_flight.{ext}", dpi=110)
        written.append(out / f"throughput_vs_in_flight.{ext}")
    plt.close(fig)
    return written


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__ + DEFAULTS_NOTE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="bench", help="model profile (default %(default)s: real sizes, random weights)")
    p.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    p.add_argument("--repository", type=Path, default=None,
                   help="generated cpu repository (default: artifacts/repository/<profile>-cpu, built if missing)")
    p.add_argument("--images", type=int, default=3, help="photos in the comparison sample (default %(default)s)")
    p.add_argument("--masks", type=int, default=8, help="masks per photo at most (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="Triton repeats of the comparison, median (default %(default)s)")
    p.add_argument("--reference_repeats", type=int, default=1, help="reference repeats (default %(default)s: it is slow)")
    p.add_argument("--in_flight", type=parse_ints, default=[1, 2, 4], help="requests in flight to sweep (default 1,2,4)")
    p.add_argument("--scaling_masks", type=parse_ints, default=[10, 25, 50],
                   help="masks per image for the scaling curve, one photo each (default 10,25,50; each 50 masks "
                        "take about 2 minutes with the bench profile on 2 cores)")
    p.add_argument("--url", default=None, metavar="HOST:PORT",
                   help="benchmark a running tritonserver (e.g. the GPU deployment of docker-compose.yml) "
                        "instead of starting the embedded one; its memory is then not measured")
    p.add_argument("--reference_device", default="cpu",
                   help="torch device of the reference pipeline (default cpu; cuda to compare a GPU server "
                        "with the reference on the same GPU)")
    p.add_argument("--out", type=Path, default=None, help="result folder (default artifacts/bench/<profile>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model_repository.server import EmbeddedServer

    started = time.perf_counter()
    out = args.out or Path("artifacts/bench") / args.profile
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        profile_dir, repository = args.models_dir / args.profile, None
    else:
        profile_dir, repository = ensure_repository(args.profile, args.models_dir, args.repository)
    dirs = prepare_data(out, args.images, args.masks, args.scaling_masks)
    per_image = mask_counts(dirs["compare"])
    n_images, n_masks = len(per_image), sum(per_image)

    print(f"reference: {n_images} images, {n_masks} masks ...", file=sys.stderr)
    ref = run_reference(profile_dir, dirs["compare"], args.reference_repeats, args.reference_device)
    ref_seconds = statistics.median(ref["runs_seconds"])
    reference = {"seconds_per_image": ref_seconds / n_images, "images_per_second": n_images / ref_seconds,
                 "masks_per_second": n_masks / ref_seconds, "runs_seconds": ref["runs_seconds"],
                 "stage_seconds_per_image": ref["stage_seconds_per_image"], "peak_memory_mib": ref["peak_memory_mib"]}

    import tritonclient.grpc as grpcclient

    with contextlib.ExitStack() as stack:
        if args.url:
            url, memory = args.url, None
        else:
            server = stack.enter_context(EmbeddedServer(repository, log_path=out / "tritonserver.log"))
            url, memory = server.url, PeakMemory(server.pid)
            memory.start()
        client = grpcclient.InferenceServerClient(url)
        print("Triton: warm-up ...", file=sys.stderr)
        run_runner(url, dirs[f"masks_{args.scaling_masks[0]}"], out / "runs" / "warmup", 1)
        before = model_stats(client)
        runs = []
        for r in range(args.repeats):
            print(f"Triton: comparison run {r + 1}/{args.repeats} ...", file=sys.stderr)
            runs.append(run_runner(url, dirs["compare"], out / "runs" / f"compare_{r}", 1))
        stages, requests = triton_stages(before, model_stats(client), n_images * args.repeats)
        median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        sweep = []
        for n in args.in_flight:
            print(f"Triton: {n} in flight ...", file=sys.stderr)
            r = median_run if n == 1 else run_runner(url, dirs["compare"], out / "runs" / f"in_flight_{n}", n)
            sweep.append({"in_flight": n, "images_per_second": r["images_per_second"],
                          "masks_per_second": r["masks_per_second"]})
        scaling = []
        for n in args.scaling_masks:
            print(f"Triton: {n} masks per image ...", file=sys.stderr)
            r = run_runner(url, dirs[f"masks_{n}"], out / "runs" / f"masks_{n}", 1)
            scaling.append({"masks": r["masks"], "seconds_per_image": r["seconds"] / r["done"]})
        server_peak = memory.stop() if memory else None

    tri_seconds = statistics.median(r["seconds"] for r in runs)
    triton = {"seconds_per_image": tri_seconds / n_images, "images_per_second": n_images / tri_seconds,
              "masks_per_second": n_masks / tri_seconds, "runs_seconds": [r["seconds"] for r in runs],
              "stage_seconds_per_image": stages, "model_executions_per_image": requests,
              "client_peak_memory_mib": max(r["client_peak_memory_mib"] for r in runs),
              "server_peak_memory_mib": mib(server_peak) if server_peak is not None else None}
    profile = json.loads((profile_dir / "profile.json").read_text())
    result = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": args.profile, "model_ids": profile.get("model_ids"), "model_sources": profile.get("sources"),
        "model_parameters": parameter_counts(profile_dir),
        "machine": {"cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                    "gpu": gpu_name()},
        "server": args.url or "embedded tritonserver (cpu target)",
        "sample": {"images": n_images, "masks": n_masks, "masks_per_image": per_image,
                   "photos": sorted(p.name for p in dirs["compare"].glob("*.jpg"))},
        "repeats": args.repeats, "reference_repeats": args.reference_repeats,
        "reference": reference, "triton": triton,
        "ratio": triton["images_per_second"] / reference["images_per_second"],
        "ratio_best": max(s["images_per_second"] for s in sweep) / reference["images_per_second"],
        "labels": compare_labels(ref["labels"], out / "runs" / "compare_0"),
        "in_flight_sweep": sweep, "masks_scaling": scaling,
    }
    result["elapsed_seconds"] = time.perf_counter() - started
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "table.md").write_text(table)
    written = plots(result, out)
    print(table)
    print(f"result: {out / 'result.json'}, {out / 'table.md'}, plots: {', '.join(p.name for p in written)}")
    return 0


def parameter_counts(profile_dir: Path) -> dict[str, int]:
    """Parameters per model of the profile, read from the safetensors headers (no weights loaded)."""
    counts = {}
    for role_dir in sorted(p for p in profile_dir.iterdir() if p.is_dir()):
        total = 0
        for f in role_dir.glob("*.safetensors"):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            for name, t in header.items():
                if name != "__metadata__":
                    n = 1
                    for d in t["shape"]:
                        n *= d
                    total += n
        counts[role_dir.name] = total
    return counts


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
