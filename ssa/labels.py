"""Close-set category names of the OneFormer models (COCO panoptic 133, ADE20K 150, Cityscapes 19)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _labels() -> dict:
    return json.loads(resources.files("ssa").joinpath("data/labels.json").read_text())


@cache
def class_names(dataset: str) -> tuple[str, ...]:
    """Names the engine emits for `dataset` in class-index order.

    "coco" gives the refined panoptic names (``wall-wood`` -> ``wall``), as the published engine does.
    """
    entry = _labels()[dataset]
    table = entry.get("refined_id2label", entry["id2label"])
    return tuple(table[str(i)] for i in range(len(table)))


def raw_class_names(dataset: str) -> tuple[str, ...]:
    """The datasets' own id2label names in class-index order (what a model config carries)."""
    table = _labels()[dataset]["id2label"]
    return tuple(table[str(i)] for i in range(len(table)))
