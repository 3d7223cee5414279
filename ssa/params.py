"""The engine's parameters and its answer for one mask: what clients, runners and outputs share
with the engine, without importing its tensor code (torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Accepted range of each parameter (inclusive). A request outside them is refused before any model
# runs: a caption cap beyond the text model's positions or a batch beyond memory would otherwise
# fail deep inside a model.
PARAM_BOUNDS: dict[str, tuple[float, float]] = {
    "top_k": (1, 20),
    "scale_small": (1.0, 4.0),
    "scale_large": (1.0, 4.0),
    "scale_huge": (1.0, 4.0),
    "caption_max_length": (2, 64),
    "clipseg_size": (64, 1024),
    "batch_size": (1, 256),
}


def bounds_text(name: str) -> str:
    low, high = PARAM_BOUNDS[name]
    return f"{low}..{high}"


class _Bounded:
    """A frozen dataclass of numbers, each within `BOUNDS` (its type that of its default)."""

    BOUNDS: dict[str, tuple[float, float]] = {}
    WHAT = "parameter"

    def __post_init__(self) -> None:
        for name, (low, high) in self.BOUNDS.items():
            value = getattr(self, name)
            whole = isinstance(getattr(type(self), name), int)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
                raise ValueError(f"{name} must be {'an integer' if whole else 'a number'}, got {value!r}")
            if not low <= value <= high:  # NaN fails too
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")

    @classmethod
    def from_dict(cls, values: object, base=None):
        """From a JSON object (a request's parameters) over `base` (default: the defaults);
        ValueError naming the unknown or out-of-range field."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.WHAT}s must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.BOUNDS))
        if unknown:
            raise ValueError(f"unknown {cls.WHAT}(s) {', '.join(map(str, unknown))}; known: "
                             f"{', '.join(sorted(cls.BOUNDS))}")
        return cls(**{**(base or cls()).to_dict(), **values})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineParams(_Bounded):
    """Parameters of the algorithm (the published engine's defaults)."""

    BOUNDS = PARAM_BOUNDS

    top_k: int = 3
    scale_small: float = 1.2  # CLIP crop
    scale_large: float = 1.6  # BLIP crop
    scale_huge: float = 1.6  # CLIPSeg crop (and mask crop)
    caption_max_length: int = 20  # tokens including the decoder start token (HF generate's default)
    clipseg_size: int = 512  # CLIPSeg input side after the bilinear resize
    batch_size: int = 32  # masks per model call


SAM_BOUNDS: dict[str, tuple[float, float]] = {
    "points_per_side": (1, 128),
    "points_per_batch": (1, 16384),
    "pred_iou_thresh": (0.0, 1.0),
    "stability_score_thresh": (0.0, 1.0),
    "stability_score_offset": (0.0, 10.0),
    "box_nms_thresh": (0.0, 1.0),
    "crop_n_layers": (0, 3),
    "crop_nms_thresh": (0.0, 1.0),
    "crop_overlap_ratio": (0.0, 0.99),
    "crop_n_points_downscale_factor": (1, 8),
    "min_mask_region_area": (0, 1 << 24),
    "mask_threshold": (-10.0, 10.0),
}


@dataclass(frozen=True)
class SamParams(_Bounded):
    """SAM's automatic mask generator's parameters: segment-anything's SamAutomaticMaskGenerator
    names and defaults (ssa.sam)."""

    BOUNDS = SAM_BOUNDS
    WHAT = "SAM parameter"

    points_per_side: int = 32
    points_per_batch: int = 64  # points decoded per model call (the reference; Triton sends all of a crop)
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    mask_threshold: float = 0.0


@dataclass
class MaskLabel:
    """The engine's answer for one mask."""

    class_name: str
    class_proposals: list[str]
    proposal_scores: list[float]  # CLIP softmax probability of each proposal, over all candidates
    vote_share: float  # share of the (huge-cropped) mask's pixels that CLIPSeg gave to class_name
    caption: str
    # how far each decision was from a tie (benchmarks: agreement on decisions that are not near-ties):
    # "close_set" (OneFormer majority votes, share of the mask), "caption" (smallest gap between the
    # chosen token's logit and the next, over the steps), "clip" (logit gap at the top-k
    # boundary and order), "clipseg" (vote, share of the mask); not written to outputs
    margins: dict[str, float] | None = None

    def fields(self) -> dict:
        """The fields added to an SA-1B annotation."""
        return {"class_name": self.class_name, "class_proposals": list(self.class_proposals),
                "class_proposal_scores": [round(s, 6) for s in self.proposal_scores],
                "class_name_vote": round(self.vote_share, 6), "caption": self.caption}
