"""How much memory one image takes in the engine, and the request limits derived from it.

The engine holds, per image in progress (docs/data_plane.md explains each term):

    bytes(H, W, N, B, k) <= PER_PIXEL * H * W + B * (PER_ROW + PER_PROMPT * k) + PER_MASK * N + FIXED

with H x W the image's pixels, N its masks, B the batch size (masks per chunk) and k the top-k.
Pixels dominate for large photos (the image, its two uint8 class maps, one class's full-size resize
at a time, one CLIPSeg crop in float32); a chunk's model inputs and outputs are bounded by B; what
grows with N is only the masks' RLEs and their answers.

A server refuses a request whose bound exceeds its budget (INVALID_ARG, with the figures) instead
of letting the model process grow until the kernel's OOM killer ends it. `ServerLimits` is made once
per `ssa_engine` instance from its config (`max_masks`, `max_image_pixels`, `memory_budget_mb`,
each "auto" by default: derived from the instance's memory).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ssa.errors import InputError

MIB = 1 << 20
# coefficients of the bound (bytes), measured and rounded up (docs/data_plane.md, benchmarks.scaling)
PER_PIXEL = 32  # image 3 (+ its decoder's copy 3), class maps 2, a float32 CLIPSeg crop 12 or a class resize ~10, masks 2 (measured ~30 at 100 MP)
PER_ROW = 12 * MIB  # one chunk row: BLIP, CLIP and CLIPSeg pixels, BLIP's image embeddings, caption, votes
PER_PROMPT = 1 * MIB  # CLIPSeg's 512 x 512 float32 logits per proposal of a row
PER_MASK = 64 << 10  # one mask: its RLE, parsed annotation, extents, answers, and what the host keeps of it (measured ~1 KB at an image's peak, short RLEs)
FIXED = 768 * MIB  # one resize chunk, one chunk of mask regions, OneFormer's inputs and scores, spaCy, caches
# share of the instance's memory given to the images in progress (the rest: the models, the runtime)
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.25}
MAX_MASKS_CAP = 100_000  # masks per request at most, whatever the memory (a request is one image)
# bytes of memory per byte of an annotation file while it is parsed, at most: Python's JSON objects
# take up to 32 bytes per byte of text ("[[]]," nested empty lists, measured with tracemalloc; an
# SA-1B file takes 3.3), so a file is refused before parsing when this times its size is over budget
PER_DOCUMENT_BYTE = 40


def image_bound(height: int, width: int, masks: int, batch_size: int, top_k: int) -> int:
    """Bytes one image in progress may take at most (see the module docstring)."""
    return (PER_PIXEL * height * width + batch_size * (PER_ROW + PER_PROMPT * top_k) + PER_MASK * masks + FIXED)


@lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and others have none
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) (Windows)
        return None


def release_free_memory() -> None:
    """Give the heap that freed objects left back to the system (glibc's malloc_trim): after a large
    image its chunks' buffers stay resident in the malloc arenas of the threads that made them (tens
    of MiB each, measured: ssa_engine kept +81 MiB after its first 2,000-mask image, and crept on),
    so without this an instance's resident memory ratchets up with the largest images it has seen."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def memory_of(device: str = "cpu", device_index: int = 0) -> int:
    """Bytes of memory the instance can use: the GPU's total memory, or on the CPU the smaller of
    the machine's memory and the cgroup limit (a container's memory limit)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device_index).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@dataclass(frozen=True)
class ServerLimits:
    """What one `ssa_engine` instance accepts per request.

    budget: bytes per image in progress; max_masks / max_pixels: masks and image pixels per request.
    """

    budget: int
    max_masks: int
    max_pixels: int

    @classmethod
    def from_config(cls, params: dict[str, str], device: str, device_index: int, images_at_once: int,
                    batch_size: int, top_k: int) -> ServerLimits:
        """From ssa_engine's config parameters ("auto" or a number each). images_at_once: the images
        that may be in progress together on this device (instances x images in progress)."""
        budget_mb = parse_limit("memory_budget_mb", params.get("memory_budget_mb", "auto"), 0)
        if budget_mb == 0:  # auto
            budget = int(memory_of(device, device_index) * MEMORY_SHARE.get(device, 0.5) / max(1, images_at_once))
        else:
            budget = budget_mb * MIB
        base = image_bound(0, 0, 0, batch_size, top_k)
        room = max(0, budget - base)
        max_pixels = parse_limit("max_image_pixels", params.get("max_image_pixels", "auto"), room // PER_PIXEL)
        max_masks = parse_limit("max_masks", params.get("max_masks", "auto"), min(MAX_MASKS_CAP, room // PER_MASK))
        return cls(budget, max_masks, max_pixels)

    def check_document(self, height: int, width: int, size: int, batch_size: int, top_k: int) -> None:
        """RequestTooLarge when parsing an annotation file of `size` bytes beside the image could
        exceed the budget (`PER_DOCUMENT_BYTE`): checked before the file is parsed."""
        need = image_bound(height, width, 0, batch_size, top_k) + PER_DOCUMENT_BYTE * size
        if need > self.budget:
            raise RequestTooLarge(f"an annotation file of {size / MIB:,.1f} MiB with an image of {width} x {height} "
                                  f"pixels needs up to {need / MIB:,.0f} MiB to parse, over this server's "
                                  f"{self.budget / MIB:,.0f} MiB per image (ssa_engine memory_budget_mb)")

    def check(self, height: int, width: int, masks: int, batch_size: int, top_k: int) -> None:
        """InputError (the request is refused) when the image, its masks or their bound exceed
        this server's limits; the message gives the figures and the setting to change."""
        pixels = height * width
        if pixels > self.max_pixels:
            raise RequestTooLarge(f"image of {width} x {height} = {pixels:,} pixels exceeds this server's limit of "
                                  f"{self.max_pixels:,} pixels (ssa_engine max_image_pixels)")
        if masks > self.max_masks:
            raise RequestTooLarge(f"{masks:,} masks exceed this server's limit of {self.max_masks:,} masks per "
                                  f"image (ssa_engine max_masks)")
        need = image_bound(height, width, masks, batch_size, top_k)
        if need > self.budget:
            raise RequestTooLarge(f"image of {width} x {height} pixels with {masks:,} masks at batch size "
                                  f"{batch_size} needs up to {need / MIB:,.0f} MiB, over this server's "
                                  f"{self.budget / MIB:,.0f} MiB per image (ssa_engine memory_budget_mb)")


class RequestTooLarge(InputError):
    """A request over the server's limits: refused before any work, the run goes on."""

    def __init__(self, problem: str):
        super().__init__(f"too large: {problem}")


def document_limit(parsing_at_once: int, memory: int | None = None) -> int:
    """The largest annotation file (bytes) a client parses: a quarter of the machine's memory shared
    by the files it may parse at once (`PER_DOCUMENT_BYTE` each), so one huge file is refused
    (recorded, the run goes on) instead of taking the client down."""
    memory = memory_of("cpu") if memory is None else memory
    return int(memory / 4 / max(1, parsing_at_once) / PER_DOCUMENT_BYTE)


def parse_limit(key: str, value: str, auto: int) -> int:
    """A limit parameter of ssa_engine's config: "auto" (gives `auto`) or a positive integer;
    ValueError naming the parameter otherwise."""
    if str(value) == "auto":
        return int(auto)
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"ssa_engine parameter {key} must be 'auto' or a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"ssa_engine parameter {key} must be 'auto' or a positive integer, got {value!r}")
    return number
