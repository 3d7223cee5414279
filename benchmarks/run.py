"""The reference pipeline and the Triton engine side by side: same profile, same images, same
masks, one run, with how far each stage is from the machine's limit.

    python -m benchmarks --profile bench

1. measures the CPU's dense-GEMM peak (fp32 and bf16, torch, every core);
2. builds the sample (photos of the example set, masks from classical segmentation) and records it;
3. runs the reference pipeline (PyTorch fp32, one mask at a time) in this process, with per-stage
   times, then once more untimed under a FLOP counter (its FLOPs per stage);
4. per engine configuration (--configs, backend:precision: today's ONNX Runtime fp32, OpenVINO fp32,
   OpenVINO bf16), starts the embedded tritonserver on its repository and runs the batch runner
   (`ssa annotate`, a separate process) `--repeats` times with 1 request in flight; per-stage times
   come from Triton's statistics; the engine's FLOPs are counted on the calls of the same engine run
   in this process (`ssa.flops`); labels and decisions are compared with the reference's;
5. for the last configuration, sweeps requests in flight and masks per image (--scaling_masks, one
   photo each, run twice: a first pass with the photo's candidate names new to the server, then
   the timed pass with them cached, as in the comparison runs' median; the reference there is
   extrapolated from its measured seconds per image and per mask);
6. measures the dense-GEMM peak again: each share of peak is taken against the higher of the two
   measurements (a shared machine's speed moves during a half-hour run; against its slower moment
   a share would read high), and both are reported;
7. writes `result.json`, `table.md` and the plots (PNG + SVG) to --out, and prints the table
   (`timings.json`, every timed figure, is written before the FLOP counting passes).

Peak memory: the reference is this process; the client is the runner process; the server is the
tritonserver process tree (sampled). Labels: every class_name and class_proposals compared; and
decision by decision (`ssa.agreement`): a decision whose reference margin is clear of a near-tie
must come out the same in every precision.
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
The defaults (3 photos x 8 masks, 3 configurations, 3 Triton repeats, 1/2/4 in flight, 25/100 masks
per image) finish in about 25 minutes with the bench profile on a 2-core machine.
"""
# today's cpu target (the baseline), then the OpenVINO backend in both precisions
DEFAULT_CONFIGS = "onnxruntime:fp32,openvino:fp32,openvino:bf16"
STAGES = ("oneformer", "caption", "clip", "clipseg", "pre/post-processing")
# Triton models per stage; what ssa_engine spends beyond its sub-model requests is pre/post-processing
MODEL_STAGE = {"oneformer_coco": "oneformer", "oneformer_ade20k": "oneformer", "blip_vision": "caption",
               "blip_caption": "caption", "clip_image": "clip", "clip_text": "clip", "clipseg_visual": "clipseg",
               "clipseg_text": "clipseg", "clipseg_decoder": "clipseg"}
MODEL_STAGES = STAGES[:-1]


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
            total += status_bytes(pid, "VmRSS")
        except OSError:
            continue
    return total


def status_bytes(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status in bytes ("VmRSS": resident now, "VmHWM": its peak); 0
    where the process has none (a kernel thread)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


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


def reference_flops(profile_dir: Path, data_dir: Path) -> dict:
    """The reference's FLOPs per stage per image on `data_dir` (one untimed pass under FlopCounterMode,
    as the GPU benchmark counts it)."""
    from benchmarks.device import count_reference
    from ssa.dataset import folder_items
    from ssa.runner import load_item

    loaded = [(item, image, masks) for item in folder_items(data_dir) for image, _doc, masks in [load_item(item)]]
    return count_reference(profile_dir, loaded, "cpu", None)


def release_memory() -> None:
    """Collect, and hand freed heap back to the system (glibc keeps it otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def in_child(fn, *args):
    """`fn(*args)` in a fresh process (spawned), its result returned: the counting passes load every
    model again, and their memory must not stay with this process while the servers run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def engine_flops(profile_dir: Path, export_dir: Path, data_dir: Path, precision: str, cache: Path) -> dict:
    """The engine's FLOPs per stage per image on `data_dir`: the engine (`ssa.engine`, the graphs on
    OpenVINO at `precision`, as served) run in this process, every graph call counted (`cache`: the
    counts kept between runs)."""
    from ssa.dataset import folder_items
    from ssa.engine import annotate_image
    from ssa.flops import GraphFlops, by_stage, counting
    from ssa.nouns import load_spacy
    from ssa.openvino_models import openvino_models
    from ssa.preprocess import Processors
    from ssa.runner import load_item

    flops = GraphFlops(profile_dir, cache)
    processors = Processors.load(profile_dir)
    models = openvino_models(export_dir, processors, os.cpu_count() or 2, precision)
    per_graph: dict[str, int] = {}
    counting(models, flops, per_graph)
    nlp = load_spacy()
    loaded = [load_item(item) for item in folder_items(data_dir)]
    for image, _doc, masks in loaded:  # once uncounted: names cached, as in the timed runs' median
        annotate_image(image, masks, models, processors, nlp=nlp)
    per_graph.clear()
    for image, _doc, masks in loaded:
        annotate_image(image, masks, models, processors, nlp=nlp)
    images = len(loaded)
    flops.save()
    stages = by_stage(per_graph)
    return {s: stages.get(s, 0) / images for s in MODEL_STAGES}


def efficiency(flops: dict, seconds: dict, peak: float) -> dict:
    """Per model stage and all together: FLOPs, seconds, achieved FLOP/s and its share of `peak`."""
    out = {}
    for stage in MODEL_STAGES:
        f, t = flops.get(stage, 0), seconds.get(stage, 0)
        out[stage] = {"flops": f, "seconds": t, "flop_per_s": f / t if t else None,
                      "share_of_peak": f / t / peak if t else None}
    f, t = sum(flops.get(s, 0) for s in MODEL_STAGES), sum(seconds.get(s, 0) for s in MODEL_STAGES)
    out["models"] = {"flops": f, "seconds": t, "flop_per_s": f / t if t else None,
                     "share_of_peak": f / t / peak if t else None}
    return out


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
    """Labels (class_name + class_proposals) equal on every mask, and decision by decision
    (`ssa.agreement.decision_agreement`: the clear decisions that differ, should be none)."""
    from types import SimpleNamespace

    from ssa.agreement import decision_agreement

    equal = total = 0
    engine = {}
    for stem, labels in reference.items():
        found = sorted(out_dir.rglob(f"{stem}_semantic.json"))  # <out_dir>/<input name>/<stem>_semantic.json
        if len(found) != 1:
            raise FileNotFoundError(f"{out_dir}: {len(found)} outputs of {stem} (expected one)")
        doc = json.loads(found[0].read_text())
        engine[stem] = [SimpleNamespace(class_name=a["class_name"], class_proposals=a["class_proposals"],
                                        caption=a["caption"]) for a in doc["annotations"]]
        for lab, ann in zip(labels, doc["annotations"], strict=True):
            total += 1
            equal += (lab.class_name, lab.class_proposals) == (ann["class_name"], ann["class_proposals"])
    return {"equal": equal, "total": total, **decision_agreement(reference, engine)}


def ensure_export(profile: str, models_dir: Path, export_dir: Path | None = None) -> tuple[Path, Path]:
    """(profile dir, export dir), building the profile and its ONNX export if missing."""
    from ssa.profiles import build_profile

    profile_dir = models_dir / profile
    if not (profile_dir / "profile.json").is_file():
        print(f"building the {profile} profile ...", file=sys.stderr)
        build_profile(profile, profile_dir)
    export_dir = export_dir or Path("artifacts/onnx") / profile
    if not (export_dir / "manifest.json").is_file():
        from export.core import export_profile

        print(f"exporting the {profile} profile to ONNX (checked against PyTorch) ...", file=sys.stderr)
        export_profile(profile_dir, export_dir, log=lambda m: print(m, file=sys.stderr))
    return profile_dir, export_dir


def ensure_repository(profile: str, models_dir: Path, repository: Path | None, backend: str = "openvino",
                      precision: str | None = None, export_dir: Path | None = None,
                      root: Path = Path("artifacts/repository")) -> tuple[Path, Path]:
    """(profile dir, cpu repository): `repository` as given, or one generated for `backend` and
    `precision` (labelling only: SAM's figures are python -m benchmarks.sam's), building the
    profile and its export if missing."""
    from model_repository.generate import generate_repository

    profile_dir, export_dir = ensure_export(profile, models_dir, export_dir)
    if repository is None:
        repository = root / f"{profile}-cpu-{backend}-{precision or 'default'}"
        generate_repository(export_dir, profile_dir, repository, "cpu", threads=os.cpu_count() or 2, include_sam=False,
                            backend=backend, precision=precision)
    return profile_dir, repository


def parse_configs(text: str) -> list[tuple[str, str]]:
    """"onnxruntime:fp32,openvino:bf16" -> [(backend, precision)]."""
    from model_repository.generate import BACKENDS
    from ssa.openvino_models import PRECISIONS

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        backend, _, precision = part.partition(":")
        if backend == "served" and precision:  # --url: what that server runs (e.g. served:fp16 on TensorRT)
            out.append((backend, precision))
            continue
        if backend not in BACKENDS[:2] or precision not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"{part!r}: a configuration is backend:precision, backend one of "
                                             f"{', '.join(BACKENDS[:2])} (or served with --url), precision one of "
                                             f"{', '.join(PRECISIONS)}")
        if backend == "onnxruntime" and precision != "fp32":
            raise argparse.ArgumentTypeError(f"{part!r}: ONNX Runtime runs fp32 only")
        out.append((backend, precision))
    if not out:
        raise argparse.ArgumentTypeError("no configuration given")
    return out


def _gf(f: float | None) -> str:
    if f is None:
        return ""
    return f"{f / 1e9:,.0f}" if f >= 1e10 else f"{f / 1e9:,.1f}"


def _peak_pair(result: dict, precision: str) -> str:
    """" (before X, after Y)" of one precision's two peak measurements, where the run has both."""
    m = result.get("peak_measurements")
    if not m or not all(m[w].get(precision) for w in ("before", "after")):
        return ""
    return f" (before {m['before'][precision] / 1e9:,.0f}, after {m['after'][precision] / 1e9:,.0f})"


def _eff(e: dict | None) -> str:
    """"GFLOP/s (share of peak)" of one efficiency entry."""
    if not e or not e["flop_per_s"]:
        return ""
    return f"{e['flop_per_s'] / 1e9:,.0f} ({e['share_of_peak']:.0%})"


def markdown(result: dict) -> str:
    ref, engines = result["reference"], result["engines"]
    names = list(engines)
    primary = engines[names[-1]]
    best = max(result["in_flight_sweep"], key=lambda r: r["images_per_second"])
    cols = ["reference (PyTorch fp32)"] + [engines[n]["label"] for n in names] + [f"{names[-1]}, best"]
    rows = [
        ("images/s", [f"{ref['images_per_second']:.4f}"] + [f"{engines[n]['images_per_second']:.4f}" for n in names]
         + [f"{best['images_per_second']:.4f} ({best['in_flight']} in flight)"]),
        ("s/image", [f"{ref['seconds_per_image']:.2f}"] + [f"{engines[n]['seconds_per_image']:.2f}" for n in names]
         + [f"{1 / best['images_per_second']:.2f}"]),
        ("engine / reference (images/s)", ["1.00"] + [f"{engines[n]['ratio']:.2f}x" for n in names]
         + [f"{result['ratio_best']:.2f}x"]),
    ]
    for stage in STAGES:
        rows.append((f"  {stage} s/image", [f"{ref['stage_seconds_per_image'][stage]:.2f}"]
                     + [f"{engines[n]['stage_seconds_per_image'][stage]:.2f}" for n in names] + [""]))
    for stage in MODEL_STAGES:
        rows.append((f"  {stage} GFLOP/image", [_gf(ref["efficiency"][stage]["flops"])]
                     + [_gf((engines[n]["efficiency"] or {}).get(stage, {}).get("flops")) for n in names] + [""]))
    for stage in (*MODEL_STAGES, "models"):
        label = "models together" if stage == "models" else f"  {stage}"
        rows.append((f"{label}: GFLOP/s (share of peak)", [_eff(ref["efficiency"][stage])]
                     + [_eff((engines[n]["efficiency"] or {}).get(stage)) for n in names] + [""]))
    rows += [
        ("peak memory, client MiB", [f"{ref['peak_memory_mib']:.0f} (reference process)"]
         + [f"{engines[n]['client_peak_memory_mib']:.0f}" for n in names] + [""]),
        ("peak memory, server MiB", [""] + ["n/a (external server)" if engines[n]["server_peak_memory_mib"] is None
                                           else f"{engines[n]['server_peak_memory_mib']:.0f}" for n in names] + [""]),
        ("labels equal (class_name + class_proposals)", [""]
         + [f"{engines[n]['labels']['equal']}/{engines[n]['labels']['total']}" for n in names] + [""]),
    ]
    for d in ("caption", "clip", "clipseg"):
        rows.append((f"  {d} decisions equal, clear of a near-tie", [""] + [
            "{clear_equal}/{clear} (all: {equal}/{compared})".format(**engines[n]["labels"]["decisions"][d])
            for n in names] + [""]))
    rows.append(("clear decisions that differ", [""] + [str(len(engines[n]["labels"]["differ_clear"])) for n in names]
                 + [""]))
    s, peaks = result["sample"], result["peaks"]
    head = (f"`{result['command']}`: profile `{result['profile']}`, {s['images']} images with "
            f"{s['masks']} masks ({', '.join(map(str, s['masks_per_image']))} per image), "
            f"{result['machine']['cores']} cores ({result['machine']['cpu']}), reference x{result['reference_repeats']} "
            f"and each engine x{result['repeats']} (median), {result['elapsed_seconds'] / 60:.1f} min in all. "
            f"Dense-GEMM peak measured in this run (torch, {result['machine']['cores']} threads), the higher of "
            "two measurements, before and after the timed runs: "
            + ", ".join(f"{p} {v / 1e9:,.0f} GFLOP/s{_peak_pair(result, p)}" for p, v in peaks.items() if v)
            + "; a stage's share is taken against its precision's peak. FLOPs counted with FlopCounterMode "
            "(matmuls, convolutions, attention).\n\n")
    table = "| | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n"
    table += "".join(f"| {name} | " + " | ".join(vals) + " |\n" for name, vals in rows)
    sc = result["masks_scaling"]
    scale = (f"\n{primary['label']} as masks per image grow (one photo; the reference extrapolated from its "
             f"measured {ref['per_image_seconds']:.2f} s per image + {ref['per_mask_seconds']:.2f} s per mask):\n\n"
             "| masks | engine s/image | reference s/image (extrapolated) | engine / reference | "
             "first pass: engine s/image (engine / reference) | engine GFLOP/image | "
             "models: GFLOP/s (share of peak) |\n|---|---|---|---|---|---|---|\n")
    scale += "".join(f"| {r['masks']} | {r['seconds_per_image']:.2f} | {r['reference_seconds_per_image']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['first_pass_seconds_per_image']:.2f} ({r['first_pass_ratio']:.2f}x) | "
                     f"{_gf((r['efficiency'] or {}).get('models', {}).get('flops'))} | "
                     f"{_eff((r['efficiency'] or {}).get('models'))} |\n"
                     for r in sc)
    scale += ("\nEach point runs twice on one server: the first pass encodes the photo's new candidate names "
              "(each name once, then cached by name), the second finds them cached, as the comparison runs' "
              "median does; seconds, FLOPs and shares are the second pass's.\n")
    return head + table + scale


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
    p.add_argument("--onnx_dir", type=Path, default=None, help="the profile's export (default artifacts/onnx/<profile>)")
    p.add_argument("--configs", type=parse_configs, default=parse_configs(DEFAULT_CONFIGS), metavar="B:P,...",
                   help=f"engine configurations, backend:precision (default {DEFAULT_CONFIGS}: today's ONNX Runtime "
                        "cpu target first, as the baseline); the last one gets the sweeps")
    p.add_argument("--repository_root", type=Path, default=Path("artifacts/repository"),
                   help="where the configurations' repositories are generated (default %(default)s)")
    p.add_argument("--images", type=int, default=3, help="photos in the comparison sample (default %(default)s)")
    p.add_argument("--masks", type=int, default=8, help="masks per photo at most (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="Triton repeats of the comparison, median (default %(default)s)")
    p.add_argument("--reference_repeats", type=int, default=1, help="reference repeats (default %(default)s: it is slow)")
    p.add_argument("--in_flight", type=parse_ints, default=[1, 2, 4], help="requests in flight to sweep (default 1,2,4)")
    p.add_argument("--scaling_masks", type=parse_ints, default=[25, 100],
                   help="masks per image for the scaling curve, one photo each (default 25,100: SA-1B has about "
                        "100 masks per image)")
    p.add_argument("--url", default=None, metavar="HOST:PORT",
                   help="benchmark a running tritonserver (e.g. the GPU deployment of docker-compose.yml) "
                        "instead of starting the embedded one; its memory is then not measured, and --configs "
                        "names what it serves (one configuration)")
    p.add_argument("--reference_device", default="cpu",
                   help="torch device of the reference pipeline (default cpu; cuda to compare a GPU server "
                        "with the reference on the same GPU)")
    p.add_argument("--out", type=Path, default=None, help="result folder (default artifacts/bench/<profile>)")
    return p


def run_engine(name: str, url: str, client, dirs: dict, args, out: Path, sweeps: bool) -> dict:
    """One engine configuration on a server: warm-up, the comparison runs, and (sweeps) the
    in-flight and masks-per-image sweeps."""
    print(f"{name}: warm-up ...", file=sys.stderr)
    run_runner(url, dirs[f"masks_{args.scaling_masks[0]}"], out / "runs" / name / "warmup", 1)
    before = model_stats(client)
    runs = []
    for r in range(args.repeats):
        print(f"{name}: comparison run {r + 1}/{args.repeats} ...", file=sys.stderr)
        runs.append(run_runner(url, dirs["compare"], out / "runs" / name / f"compare_{r}", 1))
    n_images = runs[0]["done"]
    stages, requests = triton_stages(before, model_stats(client), n_images * args.repeats)
    median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    sweep, scaling = [], []
    for n in args.in_flight if sweeps else ():
        print(f"{name}: {n} in flight ...", file=sys.stderr)
        r = median_run if n == 1 else run_runner(url, dirs["compare"], out / "runs" / name / f"in_flight_{n}", n)
        sweep.append({"in_flight": n, "images_per_second": r["images_per_second"], "masks_per_second": r["masks_per_second"]})
    for n in args.scaling_masks if sweeps else ():
        # twice: the first pass encodes the photo's new candidate names, the second finds them
        # cached, as the comparison runs' median does and as the FLOP count (`engine_flops`) counts
        print(f"{name}: {n} masks per image (first pass) ...", file=sys.stderr)
        first = run_runner(url, dirs[f"masks_{n}"], out / "runs" / name / f"masks_{n}_first", 1)
        print(f"{name}: {n} masks per image (again, names cached) ...", file=sys.stderr)
        before_n = model_stats(client)
        r = run_runner(url, dirs[f"masks_{n}"], out / "runs" / name / f"masks_{n}", 1)
        stages_n, _ = triton_stages(before_n, model_stats(client), r["done"])
        scaling.append({"masks": r["masks"], "seconds_per_image": r["seconds"] / r["done"],
                        "first_pass_seconds_per_image": first["seconds"] / first["done"], "stage_seconds": stages_n})
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds_per_image": seconds / n_images, "images_per_second": n_images / seconds,
            "masks_per_second": sum(r["masks"] for r in runs) / len(runs) / seconds,
            "runs_seconds": [r["seconds"] for r in runs], "stage_seconds_per_image": stages,
            "model_executions_per_image": requests,
            "client_peak_memory_mib": max(r["client_peak_memory_mib"] for r in runs),
            "in_flight_sweep": sweep, "masks_scaling": scaling}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from model_repository.server import EmbeddedServer
    from ssa.flops import gemm_peak
    from ssa.openvino_models import cpu_has_bf16

    started = time.perf_counter()
    out = args.out or Path("artifacts/bench") / args.profile
    out.mkdir(parents=True, exist_ok=True)
    if bool(args.url) != any(b == "served" for b, _ in args.configs) or (args.url and len(args.configs) != 1):
        raise SystemExit("--url goes with one configuration, served:PRECISION (what that server runs, e.g. "
                         "--configs served:fp16), and served only with --url")
    torch.set_num_threads(os.cpu_count() or 2)
    ref_device = torch.device(args.reference_device)  # the peaks of the device the reference runs on

    def measure_peaks(when: str) -> dict:
        print(f"dense-GEMM peak ({when}) ...", file=sys.stderr)
        return {"fp32": gemm_peak(ref_device, "fp32"),
                "bf16": gemm_peak(ref_device, "bf16") if ref_device.type == "cuda" or cpu_has_bf16() else None,
                **({"fp16": gemm_peak(ref_device, "fp16", n=8192)} if ref_device.type == "cuda" else {})}

    peaks_before = measure_peaks("before the timed runs")
    profile_dir, export_dir = ensure_export(args.profile, args.models_dir, args.onnx_dir)
    dirs = prepare_data(out, args.images, args.masks, args.scaling_masks)
    per_image = mask_counts(dirs["compare"])
    n_images, n_masks = len(per_image), sum(per_image)

    print(f"reference: {n_images} images, {n_masks} masks ...", file=sys.stderr)
    ref = run_reference(profile_dir, dirs["compare"], args.reference_repeats, args.reference_device)
    release_memory()  # the reference's models: give their memory back before the servers start
    ref_seconds = statistics.median(ref["runs_seconds"])
    ref_stages = ref["stage_seconds_per_image"]
    reference = {"seconds_per_image": ref_seconds / n_images, "images_per_second": n_images / ref_seconds,
                 "masks_per_second": n_masks / ref_seconds, "runs_seconds": ref["runs_seconds"],
                 "stage_seconds_per_image": ref_stages, "peak_memory_mib": ref["peak_memory_mib"],
                 # OneFormer runs once per image; everything else once per mask
                 "per_image_seconds": ref_stages["oneformer"],
                 "per_mask_seconds": (ref_seconds / n_images - ref_stages["oneformer"]) * n_images / n_masks}

    import tritonclient.grpc as grpcclient

    cache = Path("artifacts/bench") / "flops_cache.json"
    engines = {}
    for k, (backend, precision) in enumerate(args.configs):
        name = f"{backend}-{precision}"
        last = k == len(args.configs) - 1
        with contextlib.ExitStack() as stack:
            if args.url:
                url, memory = args.url, None
            else:
                _, repository = ensure_repository(args.profile, args.models_dir, None, backend, precision, export_dir,
                                                  args.repository_root)
                print(f"{name}: starting the embedded tritonserver ...", file=sys.stderr)
                server = stack.enter_context(EmbeddedServer(repository, log_path=out / f"tritonserver-{name}.log"))
                url, memory = server.url, PeakMemory(server.pid)
                memory.start()
            client = grpcclient.InferenceServerClient(url)
            result = run_engine(name, url, client, dirs, args, out, sweeps=last)
            result["server_peak_memory_mib"] = mib(memory.stop()) if memory else None
        runs_on = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "served": f"server at {args.url},"}[backend]
        result.update(backend=backend, precision=precision, label=f"Triton, {runs_on} {precision}",
                      ratio=result["images_per_second"] / reference["images_per_second"],
                      labels=compare_labels(ref["labels"], out / "runs" / name / "compare_0"))
        for point in result["masks_scaling"]:
            point["reference_seconds_per_image"] = (reference["per_image_seconds"]
                                                    + point["masks"] * reference["per_mask_seconds"])
            point["ratio"] = point["reference_seconds_per_image"] / point["seconds_per_image"]
            point["first_pass_ratio"] = point["reference_seconds_per_image"] / point["first_pass_seconds_per_image"]
        engines[name] = result

    # measured again after the timed runs: a shared machine's speed moves over half an hour, and a
    # share of peak taken against its slower moment would read high; each share is taken against the
    # higher of the two
    peak_measurements = {"before": peaks_before, "after": measure_peaks("after the timed runs")}
    peaks = {p: max((m[p] for m in peak_measurements.values() if m.get(p)), default=None) for p in peaks_before}
    # the timings first, so a failure in the counting passes below does not lose half an hour of runs
    (out / "timings.json").write_text(json.dumps({"reference": reference, "engines": engines, "peaks": peaks,
                                                  "peak_measurements": peak_measurements},
                                                 indent=2, default=str) + "\n")
    # FLOPs, after the timed runs, each count in its own process (untimed: the counter slows work)
    print("reference: FLOPs (untimed pass) ...", file=sys.stderr)
    reference["efficiency"] = efficiency(in_child(reference_flops, profile_dir, dirs["compare"]), ref_stages,
                                         peaks["fp32"])
    counted = {}
    for name, result in engines.items():
        precision = result["precision"]
        if result["backend"] == "served":  # its graphs are not here to count: the in-process benchmark counts them
            result["efficiency"] = None
            for point in result["masks_scaling"]:
                point["efficiency"] = None
                point.pop("stage_seconds")
            continue
        if precision not in counted:
            print(f"{name}: FLOPs (the same engine in a child process, every graph call counted) ...", file=sys.stderr)
            counted[precision] = in_child(engine_flops, profile_dir, export_dir, dirs["compare"], precision, cache)
        peak = peaks[precision] or peaks["fp32"]  # bf16 without bf16 units runs fp32
        result["efficiency"] = efficiency(counted[precision], result["stage_seconds_per_image"], peak)
        for point in result["masks_scaling"]:
            f = in_child(engine_flops, profile_dir, export_dir, dirs[f"masks_{point['masks']}"], precision, cache)
            point["efficiency"] = efficiency(f, point.pop("stage_seconds"), peak)
    primary = engines[list(engines)[-1]]
    profile = json.loads((profile_dir / "profile.json").read_text())
    result = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": args.profile, "model_ids": profile.get("model_ids"), "model_sources": profile.get("sources"),
        "model_parameters": parameter_counts(profile_dir),
        "machine": {"cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                    "cpu": cpu_name(), "gpu": gpu_name(), "bf16_units": cpu_has_bf16()},
        "peaks": peaks, "peak_measurements": peak_measurements,
        "server": args.url or "embedded tritonserver (cpu target)",
        "sample": {"images": n_images, "masks": n_masks, "masks_per_image": per_image,
                   "photos": sorted(p.name for p in dirs["compare"].glob("*.jpg"))},
        "repeats": args.repeats, "reference_repeats": args.reference_repeats,
        "reference": reference, "engines": engines, "triton": primary,
        "ratio": primary["ratio"],
        "ratio_best": max(s["images_per_second"] for s in primary["in_flight_sweep"]) / reference["images_per_second"],
        "labels": {k: primary["labels"][k] for k in ("equal", "total")},
        "in_flight_sweep": primary["in_flight_sweep"], "masks_scaling": primary["masks_scaling"],
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


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), with its matrix-unit flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "CPU")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    units = [f for f in ("amx_bf16", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name}, {' '.join(units) or 'no bf16 units'}"
