"""The engine's parameters and its answer for one mask: what clients, runners and outputs share
with the engine, without importing its tensor code (torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EngineParams:
    """Parameters of the algorithm (the published engine's defaults)."""

    top_k: int = 3
    scale_small: float = 1.2  # CLIP crop
    scale_large: float = 1.6  # BLIP crop
    scale_huge: float = 1.6  # CLIPSeg crop (and mask crop)
    caption_max_length: int = 20  # tokens including the decoder start token (HF generate's default)
    clipseg_size: int = 512  # CLIPSeg input side after the bilinear resize
    batch_size: int = 32  # masks per model call

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("scale_small", "scale_large", "scale_huge"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(f"{name} must be >= 1.0, got {getattr(self, name)}")
        if self.caption_max_length < 2 or self.clipseg_size < 16 or self.batch_size < 1:
            raise ValueError(f"invalid parameters {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MaskLabel:
    """The engine's answer for one mask."""

    class_name: str
    class_proposals: list[str]
    proposal_scores: list[float]  # CLIP softmax probability of each proposal, over all candidates
    vote_share: float  # share of the (huge-cropped) mask's pixels that CLIPSeg gave to class_name
    caption: str
    # how far each decision was from a tie (benchmarks: agreement on decisions that are not near-ties):
    # "close_set" (OneFormer majority votes, share of the mask), "clip" (logit gap at the top-k
    # boundary and order), "clipseg" (vote, share of the mask); not written to outputs
    margins: dict[str, float] | None = None

    def fields(self) -> dict:
        """The fields added to an SA-1B annotation."""
        return {"class_name": self.class_name, "class_proposals": list(self.class_proposals),
                "class_proposal_scores": [round(s, 6) for s in self.proposal_scores],
                "class_name_vote": round(self.vote_share, 6), "caption": self.caption}
