"""A user's vocabulary: class names (each with optional synonyms) that CLIP chooses among.

File format (UTF-8), one class per line; `#` starts a comment line, blank lines are skipped:

    car
    person: man, woman, child
    traffic light

The first name of a line is the class name written to the outputs; names after a colon are its
synonyms. A class is scored by CLIP with the mean of its names' text embeddings (prompt
ensembling); a close-set or caption candidate equal to a synonym becomes the class name.

Two modes: merged (the vocabulary joins every mask's close-set and caption candidates before
CLIP's top-k) and only (the vocabulary replaces them: CLIP's top-k over the list, CLIPSeg's vote
among that top-k).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssa.errors import InputError

MAX_NAMES = 10_000  # classes in one vocabulary
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Vocabulary:
    classes: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # class -> its other names
    only: bool = False  # replace the close-set and caption candidates instead of joining them

    def __post_init__(self) -> None:
        if not self.classes:
            raise InputError("vocabulary is empty (no class names)")
        if len(self.classes) > MAX_NAMES:
            raise InputError(f"vocabulary has {len(self.classes)} class names; at most {MAX_NAMES} are allowed")
        names = [*self.classes, *(s for syn in self.synonyms.values() for s in syn)]
        for name in names:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise InputError(f"vocabulary name {name!r} is empty or has surrounding spaces")
            if len(name) > MAX_NAME_CHARS:
                raise InputError(f"vocabulary name {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
        seen: dict[str, str] = {}
        for cls in self.classes:
            for name in (cls, *self.synonyms.get(cls, ())):
                if name in seen:
                    raise InputError(f"vocabulary name {name!r} is listed twice (class {seen[name]!r} and {cls!r})")
                seen[name] = cls
        unknown = set(self.synonyms) - set(self.classes)
        if unknown:
            raise InputError(f"synonyms given for names that are not classes: {sorted(unknown)[:5]}")

    # ------------------------------------------------------------------ reading and sending
    @classmethod
    def read(cls, path: str | Path, only: bool = False) -> Vocabulary:
        """Read a vocabulary file; InputError naming the file and the line for any problem."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise InputError(f"cannot read vocabulary file ({exc.strerror or exc})", path) from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"vocabulary file is not UTF-8 text (byte {exc.start})", path) from exc
        classes, synonyms = [], {}
        for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, colon, rest = line.partition(":")
            name = " ".join(name.split())
            others = tuple(" ".join(s.split()) for s in rest.split(",") if s.strip()) if colon else ()
            if not name:
                raise InputError(f"line {number}: no class name before ':'", path)
            classes.append(name)
            if others:
                synonyms[name] = others
            if len(classes) > MAX_NAMES:
                raise InputError(f"more than {MAX_NAMES} class names (line {number}); at most {MAX_NAMES} "
                                 f"are allowed", path)
        if not classes:
            raise InputError("vocabulary file has no class names (one per line; '#' lines are comments)", path)
        try:
            return cls(tuple(classes), synonyms, only)
        except InputError as exc:
            raise exc.with_source(path) from None

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "synonyms": {k: list(v) for k, v in self.synonyms.items()},
                "only": self.only}

    @classmethod
    def from_json(cls, value: object) -> Vocabulary:
        """From `to_json`'s form (a request's "vocabulary" parameter); InputError for anything else."""
        if not isinstance(value, dict) or not isinstance(value.get("classes"), list):
            raise InputError('vocabulary must be an object {"classes": [names], "synonyms": {name: [names]}, '
                             '"only": bool}')
        synonyms = value.get("synonyms") or {}
        only = value.get("only", False)
        if not isinstance(synonyms, dict) or not all(isinstance(v, list) for v in synonyms.values()) \
                or not isinstance(only, bool):
            raise InputError("vocabulary synonyms must map names to lists of names, and only must be true or false")
        if len(value["classes"]) > MAX_NAMES:
            raise InputError(f"vocabulary has {len(value['classes'])} class names; at most {MAX_NAMES} are allowed")
        return cls(tuple(value["classes"]), {k: tuple(v) for k, v in synonyms.items()}, only)

    @property
    def sha256(self) -> str:
        """Hash of the classes and synonyms (not the mode): the same list, the same hash."""
        canonical = json.dumps([self.classes, sorted((k, list(v)) for k, v in self.synonyms.items())],
                               ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def provenance(self) -> dict:
        return {"sha256": self.sha256, "size": len(self.classes),
                "synonyms": sum(len(v) for v in self.synonyms.values()), "mode": "only" if self.only else "merged"}

    # ------------------------------------------------------------------ the algorithm's uses
    def canonical(self, name: str) -> str:
        """The class name a synonym stands for (other names unchanged)."""
        return self._synonym_of.get(name, name)

    @property
    def _synonym_of(self) -> dict[str, str]:
        table = self.__dict__.get("_table")
        if table is None:
            table = {s: c for c, syn in self.synonyms.items() for s in syn}
            object.__setattr__(self, "_table", table)
        return table

    def texts(self, name: str) -> tuple[str, ...]:
        """The names a class is scored with: itself, then its synonyms."""
        return (name, *self.synonyms.get(name, ()))


def mask_candidates(close_set: Sequence[str], phrases: Sequence[str], vocabulary: Vocabulary | None) -> list[str]:
    """A mask's candidate names: the close-set names and the caption's noun phrases (each once, in
    that order); with a vocabulary, synonyms become their class and the vocabulary's classes join
    (merged) or replace (only) them."""
    from ssa.candidates import union_candidates

    if vocabulary is None:
        return union_candidates(close_set, phrases)
    if vocabulary.only:
        return list(vocabulary.classes)
    canon = vocabulary.canonical
    return union_candidates([canon(n) for n in close_set], [canon(n.strip()) for n in phrases], vocabulary.classes)


def class_embeddings(names: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray],
                     vocabulary: Vocabulary | None) -> np.ndarray:
    """(N, E) L2-normalised text embeddings of `names`: a vocabulary class with synonyms gets the
    normalised mean of its names' embeddings; every other name its own embedding, as encoded.
    `embed` maps names to (n, E) L2-normalised host arrays (all distinct texts in one call)."""
    groups = [vocabulary.texts(n) if vocabulary is not None else (n,) for n in names]
    distinct = list(dict.fromkeys(t for g in groups for t in g))
    table = dict(zip(distinct, np.asarray(embed(distinct))))
    rows = []
    for group in groups:
        if len(group) == 1:
            rows.append(table[group[0]])
        else:
            mean = np.mean([table[t].astype(np.float64) for t in group], axis=0)
            rows.append((mean / np.linalg.norm(mean)).astype(np.asarray(table[group[0]]).dtype))
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)
