"""Reference pipeline vs the Triton engine on the same profile, images and masks, in one run.

    python -m benchmarks.compare --profile bench --data_dir artifacts/examples_bench5

Prints seconds per image and per mask for both, their ratio, whether every class_name and
class_proposals matched, and how many requests each Triton model executed per image (batching
works when that number does not grow with the number of masks). Writes a JSON result too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from ssa.dataset import folder_items
from ssa.runner import load_item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="bench")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=None, help="default artifacts/repository/<profile>-cpu")
    parser.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default artifacts/bench/compare-<profile>.json)")
    args = parser.parse_args(argv)
    import tritonclient.grpc as grpcclient

    from client.engine_client import annotate
    from model_repository.server import EmbeddedServer
    from ssa.reference import TorchModels
    from ssa.reference import annotate_image as reference_annotate

    items = [i for i in folder_items(args.data_dir) if i.annotations]
    loaded = [load_item(i) for i in items]
    n_masks = [len(m) for _, _, m in loaded]
    repository = args.repository or Path("artifacts/repository") / f"{args.profile}-cpu"

    models = TorchModels.load(args.models_dir / args.profile)
    ref_times, ref_labels = [], []
    for image, _, masks in loaded:
        start = time.perf_counter()
        ref_labels.append(reference_annotate(image, masks, models))
        ref_times.append(time.perf_counter() - start)
    del models

    with EmbeddedServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.url)
        annotate(client, items[0].image.read_bytes(), items[0].annotations.read_bytes())  # warm-up
        before = {m.name: m.execution_count for m in client.get_inference_statistics(as_json=False).model_stats}
        tri_times, tri_labels = [], []
        for item in items:
            start = time.perf_counter()
            tri_labels.append(annotate(client, item.image.read_bytes(), item.annotations.read_bytes()))
            tri_times.append(time.perf_counter() - start)
        stats = client.get_inference_statistics(as_json=False).model_stats
        executions = {m.name: (m.execution_count - before.get(m.name, 0)) / len(items) for m in stats}

    total = sum(n_masks)
    mismatches = sum((a.class_name, a.class_proposals) != (b.class_name, b.class_proposals)
                     for ra, ta in zip(ref_labels, tri_labels) for a, b in zip(ra, ta))
    result = {
        "profile": args.profile, "images": len(items), "masks": total, "cores": os.cpu_count(),
        "machine": platform.machine(),
        "reference": {"seconds_per_image_median": statistics.median(ref_times),
                      "seconds_per_mask": sum(ref_times) / total, "seconds": ref_times},
        "triton": {"seconds_per_image_median": statistics.median(tri_times),
                   "seconds_per_mask": sum(tri_times) / total, "seconds": tri_times},
        "speedup_total": sum(ref_times) / sum(tri_times),
        "labels_equal": total - mismatches, "labels_differ": mismatches,
        "model_executions_per_image": executions, "masks_per_image": n_masks,
    }
    out = args.out or Path("artifacts/bench") / f"compare-{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    r, t = result["reference"], result["triton"]
    print(f"| engine | s/image (median) | s/mask |\n|---|---|---|\n"
          f"| reference (PyTorch, one mask at a time) | {r['seconds_per_image_median']:.2f} | {r['seconds_per_mask']:.3f} |\n"
          f"| Triton ssa_engine (embedded, cpu target) | {t['seconds_per_image_median']:.2f} | {t['seconds_per_mask']:.3f} |")
    print(f"speed-up (total time): {result['speedup_total']:.2f}x; labels equal on {total - mismatches}/{total} masks")
    print("model executions per image:", json.dumps({k: round(v, 2) for k, v in sorted(executions.items())}))
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
