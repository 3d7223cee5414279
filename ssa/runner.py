"""Running an annotate function over many images in this process, with progress, resume and a
failures file (the reference pipeline; the Triton batch runner is `client.runner`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssa.dataset import Item
from ssa.errors import InputError
from ssa.images import load_image
from ssa.outputs import (
    RunSummary,
    annotated_document,
    is_done,
    output_name_problem,
    provenance,
    write_failures,
    write_outputs,
)
from ssa.params import EngineParams, MaskLabel
from ssa.sa1b import MaskSet, decode_annotations, read_document
from ssa.vocabulary import Vocabulary

# (item, image (H, W, 3) uint8, validated masks) -> one label per mask
AnnotateFn = Callable[[Item, np.ndarray, MaskSet], list[MaskLabel]]


def load_item(item: Item) -> tuple[np.ndarray, dict, MaskSet]:
    """Image (H, W, 3) uint8, its document and its validated masks; InputError for any problem."""
    annotations = item.annotation_file()
    image = load_image(item.image)
    doc = read_document(annotations)
    return image, doc, decode_annotations(doc, image.shape[:2], annotations)


def run_in_process(items: Sequence[Item], out_dir: str | Path, annotate: AnnotateFn, engine: str, profile: dict,
                   params: EngineParams, save_img: bool = False, overwrite: bool = False,
                   unusable: Sequence[InputError] = (), vocabulary: Vocabulary | None = None,
                   runtime: dict | None = None) -> RunSummary:
    """Annotate `items` one after the other; a failed item is recorded and the run goes on.
    `unusable`: files of the input found unusable while listing it (recorded as failures)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = provenance(engine, profile, params, vocabulary, runtime)
    summary = RunSummary()
    for problem in unusable:
        summary.failures.append({"file": str(problem.source), "reason": problem.problem})
        tqdm.write(f"failed: {problem}")
    start = time.perf_counter()
    bar = tqdm(items, desc="images", unit="img", dynamic_ncols=True)
    for item in bar:
        problem = output_name_problem(out_dir, item.key)
        if problem is not None:
            summary.failures.append({"file": str(item.image), "reason": problem})
            tqdm.write(f"failed: {item.image}: {problem}")
            continue
        if not overwrite and is_done(out_dir, item.key):
            summary.skipped += 1
            continue
        try:
            image, doc, masks = load_item(item)
            labels = annotate(item, image, masks)
            document = annotated_document(doc, labels, prov)
            write_outputs(out_dir, item.key, document, image if save_img else None, masks if save_img else None)
        except InputError as exc:
            summary.failures.append({"file": str(exc.source or item.image), "reason": exc.problem})
            tqdm.write(f"failed: {exc}")
            continue
        except Exception as exc:  # one bad file never stops the run; the reason is recorded
            summary.failures.append({"file": str(item.image), "reason": f"{type(exc).__name__}: {exc}"})
            tqdm.write(f"failed: {item.image}: {type(exc).__name__}: {exc}")
            continue
        summary.done += 1
        summary.masks += len(masks)
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{summary.done / elapsed:.3f} img/s, {summary.masks / elapsed:.2f} masks/s")
    summary.seconds = time.perf_counter() - start
    failures_path = write_failures(out_dir, summary.failures)
    print(summary.line() + (f"; failures listed in {failures_path}" if failures_path else ""))
    return summary
