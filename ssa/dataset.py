"""Finding the work: image + SA-1B JSON pairs in a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssa.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Item:
    """One image and its annotation file (None when it has none)."""

    stem: str
    image: Path
    annotations: Path | None


def folder_items(data_dir: str | Path) -> list[Item]:
    """Every image of `data_dir` (sorted by name) with its `<stem>.json`, if present.

    Raises FileNotFoundError when the folder does not exist.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    items = []
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith("."):
            ann = path.with_suffix(".json")
            items.append(Item(path.stem, path, ann if ann.is_file() else None))
    return items
