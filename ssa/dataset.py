"""Finding the work: image + SA-1B JSON pairs in a folder, in SA-1B `.tar` shards (read in place,
never unpacked) or named by a list file; and splitting it between runners (`--shard i/N`).

Every source is listed lazily, one at a time, so a runner over a thousand shards holds one
shard's index in memory, not the dataset's.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ssa.errors import InputError
from ssa.images import IMAGE_SUFFIXES

TAR_SUFFIX = ".tar"


@dataclass(frozen=True)
class TarMember:
    """One file inside an uncompressed tar, read with a seek at its data offset."""

    tar: Path
    name: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"truncated tar: {len(data)} of {self.size} bytes")
        return data

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"


@dataclass(frozen=True)
class Item:
    """One image and its annotation file (None when it has none). Both are a Path or a TarMember:
    anything with `read_bytes()` whose str() names it for messages."""

    stem: str
    image: Path | TarMember
    annotations: Path | TarMember | None

    def annotation_file(self) -> Path | TarMember:
        """The annotation file; InputError naming the image when it has none."""
        if self.annotations is None:
            raise InputError("no annotation file (<stem>.json) beside the image", self.image)
        return self.annotations


@dataclass(frozen=True)
class Listing:
    """The items of one source, or the problem that stopped it being listed (`error`).
    A source listed partly (a truncated tar) has both."""

    source: str
    items: list[Item]
    error: InputError | None = None
    unusable: tuple[InputError, ...] = ()  # files of the source that cannot be used (a JSON with no image)


@dataclass(frozen=True)
class Shard:
    """Runner `index` of `count`: takes the items whose stem hashes to `index` (CRC-32 of the stem,
    so the split is the same on every machine and does not depend on listing order)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"--shard {text!r}: need 0 <= i < N")
        return cls(i, n)

    def __contains__(self, stem: str) -> bool:
        return self.count == 1 or zlib.crc32(stem.encode("utf-8")) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def _is_input_json(name: str) -> bool:
    """An annotation file (not one of this tool's outputs: `<stem>_semantic.json`, failures files)."""
    name = PurePosixPath(name).name
    return name.endswith(".json") and not name.startswith(".") and not name.endswith("_semantic.json") \
        and not name.startswith("failures")


def _orphans(json_names: list[str], image_names: list[str], where) -> tuple[InputError, ...]:
    """An InputError for each annotation file with no image of its stem beside it."""
    stems = {str(PurePosixPath(n).with_suffix("")) for n in image_names}
    return tuple(InputError("annotation file with no image beside it (expected <stem>.jpg or another image "
                            f"format: {', '.join(IMAGE_SUFFIXES)})", where(n))
                 for n in sorted(json_names) if str(PurePosixPath(n).with_suffix("")) not in stems)


def folder_listing(data_dir: str | Path) -> Listing:
    """Every image of `data_dir` (sorted by name) with its `<stem>.json`, if present, and an
    error for each `<stem>.json` that has no image.

    Raises FileNotFoundError when the folder does not exist.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    items, jsons = [], []
    for path in sorted(data_dir.iterdir()):
        if _is_image(path.name) and path.is_file():
            ann = path.with_suffix(".json")
            items.append(Item(path.stem, path, ann if ann.is_file() else None))
        elif _is_input_json(path.name) and path.is_file():
            jsons.append(path.name)
    return Listing(str(data_dir), items, None,
                   _orphans(jsons, [i.image.name for i in items], lambda n: data_dir / n))


def folder_items(data_dir: str | Path) -> list[Item]:
    """The items of `folder_listing`."""
    return folder_listing(data_dir).items


def tar_listing(path: str | Path) -> Listing:
    """Index an uncompressed tar shard: its images, each with the `<stem>.json` of the same folder.

    The data stays in the tar; items read it with a seek. A damaged tar yields the items indexed
    before the damage and the error.
    """
    path = Path(path)
    files: dict[str, TarMember] = {}
    error = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    files[member.name] = TarMember(path, member.name, member.offset_data, member.size)
    except tarfile.ReadError as exc:
        problem = "not an uncompressed tar (shards are read in place, so they cannot be compressed)" \
            if not files else f"damaged tar after {len(files)} files ({exc})"
        error = InputError(problem, path)
    except OSError as exc:
        error = InputError(f"cannot read tar shard ({exc.strerror or exc})", path)
    items = []
    for name in sorted(files):
        if _is_image(name):
            ann = files.get(str(PurePosixPath(name).with_suffix(".json")))
            items.append(Item(PurePosixPath(name).stem, files[name], ann))
    orphans = _orphans([n for n in files if _is_input_json(n)], [n for n in files if _is_image(n)],
                       lambda n: files[n])
    return Listing(str(path), items, error, orphans)


def list_file_items(path: str | Path) -> Listing:
    """Items named by a list file: one image path per line (its `<stem>.json` beside it), or
    `image<TAB>annotations`; relative paths are relative to the list file; `#` starts a comment."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return Listing(str(path), [], InputError(f"cannot read list file ({exc})", path))
    items = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, _, ann = line.partition("\t")
        image_path = path.parent / image.strip()
        ann_path = path.parent / ann.strip() if ann.strip() else image_path.with_suffix(".json")
        items.append(Item(image_path.stem, image_path, ann_path if ann_path.is_file() else None))
    return Listing(str(path), items)


def listings(inputs: list[str | Path]) -> Iterator[Listing]:
    """The sources named by `inputs`, listed one at a time: a folder (its images, then each of its
    `.tar` shards), a `.tar` shard, or a list file."""
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            yield folder_listing(path)
            for tar in sorted(p for p in path.iterdir() if p.suffix == TAR_SUFFIX and p.is_file()):
                yield tar_listing(tar)
        elif path.suffix == TAR_SUFFIX and path.is_file():
            yield tar_listing(path)
        elif path.is_file():
            yield list_file_items(path)
        else:
            yield Listing(str(path), [], InputError("no such file or folder", path))


def check_inputs(inputs: list[str | Path]) -> None:
    """FileNotFoundError for an input that does not exist (before a long run starts)."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
