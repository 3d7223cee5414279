"""SAM as `ssa.sam.SamModels`: in PyTorch (the reference, called the way transformers'
mask-generation pipeline calls it) or over named tensor functions (ONNX Runtime in process, or
Triton BLS requests in the `sam_masks` model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

TensorFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class TorchSam:
    """The profile's SamModel in PyTorch: `get_image_embeddings`, then the prompt encoder and mask
    decoder with one foreground point per prompt and three masks each."""

    def __init__(self, model, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def load(cls, profile_dir: str | Path, device: str | torch.device = "cpu") -> TorchSam:
        from ssa.profiles import SAM, load_role_model

        folder = Path(profile_dir) / SAM
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: the profile has no SAM model; build it with "
                                    f"`ssa models --profile <profile> --roles sam`")
        return cls(load_role_model(folder, SAM), device)

    @torch.no_grad()
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_embeddings(pixel_values)

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = points[None, :, None, :]
        labels = torch.ones_like(points[..., 0], dtype=torch.long)
        out = self.model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=True)
        return out.iou_scores[0], out.pred_masks[0]


class GraphSam:
    """SAM over the exported graphs `sam_encoder` and `sam_decoder` as tensor functions."""

    def __init__(self, fns: dict[str, TensorFn], device: torch.device):
        self.fns, self.device = fns, device

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.fns["sam_encoder"]({"pixel_values": pixel_values})["image_embeddings"]

    def decode(self, embeddings: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fns["sam_decoder"]({"image_embeddings": embeddings, "points": points.float().contiguous()})
        return out["iou_scores"], out["low_res_masks"]
