"""COCO export: the `<key>_semantic.json` files of an output folder (and its sub-folders: the
run's layout) -> one COCO instances file. It is built in memory: about 1 KB per mask, so one file
for some millions of masks; for SA-1B, export each input shard's folder (`--semantic_dir
OUT/<input>/<shard>`).

Categories are the class names found (sorted, ids from 1); each mask becomes an annotation with
its RLE segmentation, area and bbox as pycocotools computes them, `score` = the CLIPSeg vote
share of its class name, and the proposals with their CLIP scores as extra fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from ssa.errors import InputError, read_input
from ssa.masks import decode_rle, encode_rle
from ssa.outputs import SEMANTIC_SUFFIX, semantic_files
from ssa.sa1b import write_json_atomic


@dataclass
class CocoResult:
    images: int = 0
    annotations: int = 0
    categories: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


def _image_entry(doc: dict[str, Any], path: Path, folder: str = "") -> dict[str, Any]:
    image = doc.get("image")
    if not isinstance(image, dict):
        raise InputError("no 'image' object", path)
    height, width = image.get("height"), image.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise InputError(f"image height/width {height!r}/{width!r} are not positive integers", path)
    name = image.get("file_name") or path.name.removesuffix(SEMANTIC_SUFFIX) + ".jpg"
    if folder:  # the image's place in the inputs, so two images of one name in two folders stay apart
        name = f"{folder}/{name}"
    return {"id": image.get("image_id"), "width": width, "height": height, "file_name": name}


def _annotations(doc: dict[str, Any], size: tuple[int, int], path: Path) -> list[dict[str, Any]]:
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise InputError("no 'annotations' list", path)
    out = []
    for i, ann in enumerate(anns):
        where = f"annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else f'#{i}'}"
        if not isinstance(ann, dict) or not isinstance(ann.get("class_name"), str):
            raise InputError(f"{where} has no class_name (is this an ssa output?)", path)
        try:
            rle = encode_rle(decode_rle(ann.get("segmentation"), size))
        except InputError as exc:
            raise InputError(f"{where}: {exc.problem}", path) from exc
        coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        out.append({
            "segmentation": rle,
            "area": float(mask_utils.area(coded)),
            "bbox": [float(v) for v in mask_utils.toBbox(coded)],
            "iscrowd": 0,
            "class_name": ann["class_name"],
            "score": float(ann.get("class_name_vote", 1.0)),
            "class_proposals": list(ann.get("class_proposals", [])),
            "class_proposal_scores": list(ann.get("class_proposal_scores", [])),
        })
    return out


def export_coco(semantic_dir: str | Path, out: str | Path) -> CocoResult:
    """Write the COCO file for every `*_semantic.json` of `semantic_dir` and its sub-folders
    (sorted by path; `file_name` is the image's name prefixed by its sub-folder).

    A file that cannot be read or is not a valid output is skipped and reported in the result;
    image ids come from the documents, or are assigned when missing or taken.
    """
    semantic_dir = Path(semantic_dir)
    if not semantic_dir.is_dir():
        raise FileNotFoundError(f"{semantic_dir}: no such folder")
    files = semantic_files(semantic_dir)
    if not files:
        raise FileNotFoundError(f"{semantic_dir}: no *{SEMANTIC_SUFFIX} files (nor in its sub-folders)")
    result = CocoResult()
    images, per_image = [], []
    for path in files:
        try:
            try:
                doc = json.loads(read_input(path, "output file"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"invalid JSON ({exc})", path) from exc
            if not isinstance(doc, dict):
                raise InputError("not a JSON object", path)
            folder = path.parent.relative_to(semantic_dir).as_posix()
            image = _image_entry(doc, path, "" if folder == "." else folder)
            anns = _annotations(doc, (image["height"], image["width"]), path)
        except InputError as exc:
            result.failures.append({"file": str(path), "reason": exc.problem})
            continue
        images.append(image)
        per_image.append(anns)

    used = {im["id"] for im in images if isinstance(im["id"], int) and not isinstance(im["id"], bool)}
    taken, next_id = set(), max(used, default=0) + 1
    for im in images:
        if not isinstance(im["id"], int) or isinstance(im["id"], bool) or im["id"] in taken:
            im["id"], next_id = next_id, next_id + 1
        taken.add(im["id"])

    names = sorted({a["class_name"] for anns in per_image for a in anns})
    category = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for im, anns in zip(images, per_image):
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"],
                                "category_id": category[a.pop("class_name")], **a})
    coco = {
        "info": {"description": "Semantic Segment Anything labels (ssa-triton)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category.items()],
    }
    write_json_atomic(out, coco)
    result.images, result.annotations, result.categories = len(images), len(annotations), len(names)
    return result
