"""Finding the work: image + SA-1B JSON pairs in a folder (and its sub-folders), in SA-1B `.tar`
shards (read in place, never unpacked) or named by a list file; where each image's outputs go;
and splitting the work between runners (`--shard i/N`).

Every source is listed lazily, one at a time, so a runner over a thousand shards holds one
shard's index in memory, not the dataset's.

Output layout: every item has a `key`, the path of its outputs under the output folder without
the suffix (`<key>_semantic.json`, `<key>_semantic.png`, SAM's `<key>.json`). Keys mirror the
inputs: `<input name>/<sub-folder>/.../<stem>` for a folder given as input (its images, then each
of its `.tar` shards as `<input name>/<tar stem>/<member folders>/<stem>`, then each sub-folder),
`<tar stem>/<member folders>/<stem>` for a tar given as input, `<list file stem>/<path as listed>`
for a list file. So no output folder holds more than one input folder's or tar's images, and two
inputs never share an output path (inputs whose names would share a top folder are refused before
the run: `check_inputs`).
"""

from __future__ import annotations

import os
import stat
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
    anything with `read_bytes()` whose str() names it for messages. `key`: where its outputs go
    (module docstring; the stem alone when listed without a layout); `shard_key`: what `--shard`
    hashes (the key, or for a tar's images the tar's output folder: a tar is one task's work)."""

    stem: str
    image: Path | TarMember
    annotations: Path | TarMember | None
    key: str = ""
    shard_key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.stem)
        if not self.shard_key:
            object.__setattr__(self, "shard_key", self.key)

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
    folder: str = ""  # the output folder of its items, relative to the output folder
    whole: bool = False  # one task's work (a tar): its files are not split by `--shard`


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

    def __contains__(self, key: str) -> bool:
        return self.count == 1 or task_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def task_of(key: str, count: int) -> int:
    """The task of `count` that takes `key` (CRC-32: the same on every machine and Python)."""
    return zlib.crc32(key.encode("utf-8")) % count


def _is_image(name: str) -> bool:
    """An input image (not hidden, not this tool's `<stem>_semantic.png` picture of an earlier run)."""
    path = PurePosixPath(name)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and not path.stem.endswith("_semantic")


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


def folder_listing(data_dir: str | Path, folder: str = "") -> Listing:
    """Every image of `data_dir` (sorted by name) with its `<stem>.json`, if present, and an
    error for each `<stem>.json` that has no image. `folder`: the output folder of its items
    ("" : keys are the stems).

    Raises FileNotFoundError when the folder does not exist.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    with os.scandir(data_dir) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    return _folder_listing(data_dir, entries, folder)


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder (through links); False for what cannot be stat'ed (a link that loops or leads nowhere)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_listing(data_dir: Path, entries: list[os.DirEntry], folder: str) -> Listing:
    """`folder_listing` from the folder's entries, read once (sorted by name). Every entry that is
    not a folder counts as a file: one that cannot be read (a link that loops or leads nowhere, no
    permission, a FIFO) fails when its image is read, with the file and the reason, instead of
    being passed over (an image whose JSON is such a link would otherwise be sent to SAM)."""
    files = {e.name for e in entries if not _is_dir(e)}
    items, jsons = [], []
    for name in sorted(files):
        path = data_dir / name
        if _is_image(name):
            ann = path.with_suffix(".json")
            items.append(Item(path.stem, path, ann if ann.name in files else None, _join(folder, path.stem)))
        elif _is_input_json(name):
            jsons.append(name)
    return Listing(str(data_dir), items, None,
                   _orphans(jsons, [i.image.name for i in items], lambda n: data_dir / n), folder)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def safe_parts(name: str) -> list[str]:
    """The folders and name of a path inside an input (a tar member, a list file's line) as parts
    of an output path that stays inside the output folder: no root, no "." and ".." kept as "__"."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".", "")]
    return ["__" if p == ".." else p for p in parts]


def folder_items(data_dir: str | Path) -> list[Item]:
    """The items of `folder_listing`."""
    return folder_listing(data_dir).items


def tar_listing(path: str | Path, folder: str | None = None) -> Listing:
    """Index an uncompressed tar shard: its images, each with the `<stem>.json` of the same folder.
    `folder`: the output folder of its items (default: the tar's stem); keys follow the members'
    folders inside the tar.

    The data stays in the tar; items read it with a seek. A damaged tar yields the items indexed
    before the damage and the error.
    """
    path = Path(path)
    files: dict[str, TarMember] = {}
    links: dict[str, str] = {}  # name -> target; links are not followed (one may point outside the tar)
    error = None
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO named x.tar would block the listing
            raise OSError(0, "not a regular file")
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    files[member.name] = TarMember(path, member.name, member.offset_data, member.size)
                    links.pop(member.name, None)
                elif member.issym() or member.islnk():
                    links[member.name] = member.linkname
                    files.pop(member.name, None)
    except tarfile.ReadError as exc:
        problem = "not an uncompressed tar (shards are read in place, so they cannot be compressed)" \
            if not files else f"damaged tar after {len(files)} files ({exc})"
        error = InputError(problem, path)
    except OSError as exc:
        error = InputError(f"cannot read tar shard ({exc.strerror or exc})", path)
    folder = path.stem if folder is None else folder
    items = []
    for name in sorted(files):
        if _is_image(name):
            ann = files.get(str(PurePosixPath(name).with_suffix(".json")))
            key = _join(folder, *safe_parts(str(PurePosixPath(name).with_suffix(""))))
            items.append(Item(PurePosixPath(name).stem, files[name], ann, key, folder))
    linked = tuple(InputError(f"a link inside the tar (to {links[name]!r}); links are not followed, store "
                              "the file itself", TarMember(path, name, 0, 0))
                   for name in sorted(links) if _is_image(name) or _is_input_json(name))
    orphans = _orphans([n for n in files if _is_input_json(n)], [n for n in [*files, *links] if _is_image(n)],
                       lambda n: files[n])
    return Listing(str(path), items, error, linked + orphans, folder, whole=True)



def list_file_items(path: str | Path, folder: str | None = None) -> Listing:
    """Items named by a list file: one image path per line (its `<stem>.json` beside it), or
    `image<TAB>annotations`; relative paths are relative to the list file; `#` starts a comment.
    `folder`: the output folder of its items (default: the list file's stem); keys follow each
    image's path as the line gives it, relative to the list file's folder where it lies inside it
    (an absolute path elsewhere is mirrored whole: `<list stem>/abs/path/to/<stem>`)."""
    path = Path(path)
    folder = path.stem if folder is None else folder
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return Listing(str(path), [], InputError(f"cannot read list file ({exc})", path), folder=folder)
    items = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, _, ann = line.partition("\t")
        image_path = path.parent / image.strip()
        ann_path = path.parent / ann.strip() if ann.strip() else image_path.with_suffix(".json")
        listed = Path(image.strip())
        if listed.is_absolute() and listed.is_relative_to(path.parent.absolute()):
            listed = listed.relative_to(path.parent.absolute())  # beside the list file: as if relative
        key = _join(folder, *safe_parts(str(PurePosixPath(listed.as_posix()).with_suffix(""))))
        has_json = os.path.lexists(ann_path) and not ann_path.is_dir()  # an unreadable one fails its image
        items.append(Item(image_path.stem, image_path, ann_path if has_json else None, key))
    return Listing(str(path), items, folder=folder)


def input_name(path: str | Path) -> str:
    """The top output folder of an input: a folder's name, a tar's or list file's stem."""
    path = Path(path)
    if path.is_dir():
        return Path(os.path.abspath(path)).name or "root"
    return path.stem


def listings(inputs: list[str | Path], shard: Shard | None = None, exclude: tuple[str | Path, ...] = ()) -> Iterator[Listing]:
    """The sources named by `inputs`, listed one at a time: a folder (its images, then each of its
    `.tar` shards, then each sub-folder, the same way), a `.tar` shard, or a list file.

    shard: a tar that is not this shard's (by its output folder) is not opened (its index is not
    read: a task of a many-task run reads only its own tars). exclude: folders not to descend into
    (the output folder, when it lies inside an input folder). Hidden files and folders are skipped;
    a folder reached twice through links is listed once.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            yield from _walk(path, input_name(path), shard, excluded, set())
        elif path.suffix == TAR_SUFFIX and path.is_file():
            if shard is None or path.stem in shard:
                yield tar_listing(path)
        elif path.is_file():
            yield list_file_items(path)
        else:
            yield Listing(str(path), [], InputError("no such file or folder", path), folder=input_name(path))


def _walk(path: Path, folder: str, shard: Shard | None, excluded: set[str], seen: set[str]) -> Iterator[Listing]:
    real = os.path.realpath(path)
    if real in seen or real in excluded:
        return
    seen.add(real)
    try:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        yield Listing(str(path), [], InputError(f"cannot read folder ({exc.strerror or exc})", path), folder=folder)
        return
    yield _folder_listing(path, entries, folder)  # the folder is read once for its images, tars and sub-folders
    subfolders = {e.name for e in entries if not e.name.startswith(".") and _is_dir(e)}
    for entry in entries:
        if entry.name.endswith(TAR_SUFFIX) and not entry.name.startswith(".") and not _is_dir(entry):
            tar_folder = _join(folder, entry.name[: -len(TAR_SUFFIX)])
            if entry.name[: -len(TAR_SUFFIX)] in subfolders:  # both would write into one output folder
                yield Listing(entry.path, [], InputError(
                    f"shares its output folder {tar_folder}/ with the sub-folder beside it; rename one", entry.path),
                    folder=tar_folder)
            elif shard is None or tar_folder in shard:
                yield tar_listing(entry.path, tar_folder)
    for name in sorted(subfolders):
        yield from _walk(path / name, _join(folder, name), shard, excluded, seen)


def check_inputs(inputs: list[str | Path]) -> None:
    """Before a long run starts: FileNotFoundError for an input that does not exist, ValueError
    for inputs whose outputs would share a top folder (two folders of one name, a folder and a
    tar of one stem)."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    by_name: dict[str, list[str]] = {}
    for p in inputs:
        by_name.setdefault(input_name(p), []).append(str(p))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if shared:
        raise ValueError("inputs whose outputs would share a folder (outputs go to <out_dir>/<input name>/...): "
                         + "; ".join(f"{name}/: {', '.join(paths)}" for name, paths in shared.items())
                         + ". Give each input a distinct name, or run them with different --out_dir")
