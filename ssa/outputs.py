"""What the engine writes: `<key>_semantic.json` (+ optional `<key>_semantic.png`) per image,
each whole or absent, and a failures file naming every file that could not be annotated. The
key mirrors the image's place in the inputs (`ssa.dataset`)."""

from __future__ import annotations

import copy
import io
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa import __version__
from ssa.errors import plain
from ssa.params import EngineParams, MaskLabel
from ssa.sa1b import write_bytes_atomic, write_json_atomic
from ssa.vocabulary import Vocabulary

FAILURES_FILE = "failures.json"
SEMANTIC_SUFFIX = "_semantic.json"


def output_paths(out_dir: str | Path, key: str) -> tuple[Path, Path]:
    """(json path, png path) of an image's outputs; `key`: its path under `out_dir` without the
    suffix (`ssa.dataset.Item.key`: `<input>/<folder or tar>/<stem>`)."""
    out_dir = Path(out_dir)
    return out_dir / f"{key}_semantic.json", out_dir / f"{key}_semantic.png"


# The longest name written for an image: its temporary file `.<stem>_semantic.json.<8 random>.part`
# (`ssa.atomic`; the PNG's is as long, SAM's `<stem>.json` shorter).
_TEMPORARY_EXTRA = len(".") + len(SEMANTIC_SUFFIX) + len(".12345678.part")


def output_name_problem(out_dir: str | Path, key: str) -> str | None:
    """Why the outputs of `key` cannot be written under `out_dir` (a name longer than the file
    system takes: an input named with 250 characters is valid, `<stem>_semantic.json` beside it
    would not be), or None. Checked before an image is sent, so such an image fails alone instead
    of stopping the run as an unwritable output folder would."""
    try:
        name_max = os.pathconf(out_dir, "PC_NAME_MAX")
        path_max = os.pathconf(out_dir, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    *folders, stem = key.split("/")
    for name in folders:
        if len(os.fsencode(name)) > name_max:
            return (f"output folder name too long: {len(os.fsencode(name))} bytes, over the {name_max} "
                    f"this file system takes for a name ({name[:40]}...)")
    stem_max = name_max - _TEMPORARY_EXTRA
    if len(os.fsencode(stem)) > stem_max:
        return (f"name too long for its outputs: a stem of {len(os.fsencode(stem))} bytes, over the {stem_max} "
                f"that leave room for '{SEMANTIC_SUFFIX}' and the temporary suffix in this file system's "
                f"{name_max}-byte names; rename the image")
    longest = len(os.fsencode(os.path.abspath(out_dir))) + 1 + len(os.fsencode(key)) + _TEMPORARY_EXTRA
    if longest >= path_max:
        return (f"output path too long: {longest} bytes, over the {path_max - 1} this file system takes; "
                f"use a shorter --out_dir or input path")
    return None


def is_done(out_dir: str | Path, key: str) -> bool:
    """Whether `<key>_semantic.json` exists; False for a path that cannot exist (too long)."""
    try:
        return os.path.exists(output_paths(out_dir, key)[0])
    except (OSError, ValueError):
        return False


def semantic_files(out_dir: str | Path) -> list[Path]:
    """Every `<key>_semantic.json` under `out_dir`, its sub-folders included (hidden files and
    folders skipped), sorted by path."""
    import os

    found = []
    for root, dirs, names in os.walk(out_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in names if n.endswith(SEMANTIC_SUFFIX) and not n.startswith("."))
    return sorted(found)


def provenance(engine: str, profile: dict, params: EngineParams, vocabulary: Vocabulary | None = None,
               runtime: dict | None = None) -> dict[str, Any]:
    """The block recorded in every output: which engine, models, parameters and vocabulary (its
    hash, size and mode; null without one) made it, and what ran the models (`runtime`: target,
    backend, the precision each graph ran in, as the server resolved it on its machine)."""
    return {
        "engine": engine,
        "package_version": __version__,
        "profile": profile.get("profile"),
        "model_ids": profile.get("model_ids", {}),
        "model_sources": profile.get("sources", {}),
        "params": params.to_dict(),
        "vocabulary": vocabulary.provenance() if vocabulary is not None else None,
        "runtime": runtime,
        "python": platform.python_version(),
    }


def annotated_document(doc: dict[str, Any], labels: list[MaskLabel], prov: dict[str, Any]) -> dict[str, Any]:
    """The input document with every annotation kept as it was plus the engine's fields, and the
    provenance under the top-level key "ssa" (SA-1B consumers can ignore both extras)."""
    if len(labels) != len(doc["annotations"]):
        raise ValueError(f"{len(labels)} labels for {len(doc['annotations'])} annotations")
    out = copy.deepcopy(doc)
    for ann, label in zip(out["annotations"], labels):
        ann.update(label.fields())
    out["ssa"] = prov
    return out


def write_outputs(out_dir: str | Path, key: str, document: dict[str, Any], image: np.ndarray | None = None,
                  masks=None) -> None:
    """Write the JSON (and the PNG when `image` and `masks` are given), each atomically.

    The PNG is written first, so a finished JSON always means the image is done.
    """
    json_path, png_path = output_paths(out_dir, key)
    if image is not None and masks is not None:
        from ssa.render import render_labels

        names = [ann["class_name"] for ann in document["annotations"]]
        buf = io.BytesIO()
        render_labels(image, masks, names).save(buf, format="PNG")
        write_bytes_atomic(png_path, buf.getvalue())
    write_json_atomic(json_path, document)


@dataclass
class RunSummary:
    """Counts of a run over many images."""

    done: int = 0
    skipped: int = 0
    masks: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rate = self.seconds > 0
        return {"done": self.done, "skipped": self.skipped, "failed": len(self.failures), "masks": self.masks,
                "seconds": self.seconds, "images_per_second": self.done / self.seconds if rate else None,
                "masks_per_second": self.masks / self.seconds if rate else None}

    def line(self) -> str:
        rate = f", {self.done / self.seconds:.3f} images/s, {self.masks / self.seconds:.2f} masks/s" if self.seconds else ""
        return (f"done {self.done}, skipped {self.skipped}, failed {len(self.failures)} "
                f"({self.masks} masks in {self.seconds:.1f}s{rate})")


def write_failures(out_dir: str | Path, failures: list[dict[str, str]], name: str = FAILURES_FILE) -> Path | None:
    """Write the failures file (a list of {"file", "reason"}) or remove a stale one; return its path."""
    path = Path(out_dir) / name
    if failures:
        entries = [{**f, "reason": plain(f["reason"])} for f in failures]
        write_json_atomic(path, sorted(entries, key=lambda f: f["file"]))
        return path
    path.unlink(missing_ok=True)
    return None


def read_output(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
