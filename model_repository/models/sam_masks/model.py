"""Triton Python model `sam_masks`: SAM's automatic mask generator ("SSA + SAM"). One request =
one image (encoded bytes) + optional parameters (JSON, segment-anything's names and defaults);
the response is the SA-1B document of the image's masks (COCO RLE, bbox, area, predicted_iou,
stability_score, point_coords, crop_box), ready to send to `ssa_engine`.

A BLS model over `ssa.sam`: per crop, one `sam_encoder` request, then every point prompt of the
crop's grid decoded by `sam_decoder` in as few requests as its size allows (`points_per_request`),
tensors by DLPack; the filters, NMS and RLEs run here. A bad request (corrupt image, parameters
unknown or out of range) gets INVALID_ARG before any model runs.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ssa.device import from_dlpack
from ssa.errors import InputError
from ssa.images import decode_image
from ssa.sam import SamParams, generate_masks, sa1b_document
from ssa.sam_models import GraphSam


class SubModelError(RuntimeError):
    pass


def _function(model: str, outputs: list[str], device: torch.device):
    """A BLS sub-request as a tensor function; outputs asked for in this instance's memory (the GPU
    on a GPU node), so the decoder's mask logits are filtered where they were made."""
    kind = pb_utils.TRITONSERVER_MEMORY_GPU if device.type == "cuda" else pb_utils.TRITONSERVER_MEMORY_CPU
    memory = pb_utils.PreferredMemory(kind, device.index or 0)

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs, preferred_memory=memory,
            inputs=[pb_utils.Tensor.from_dlpack(n, v.contiguous()) for n, v in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise SubModelError(f"{model}: {response.error().message()}")
        return {n: from_dlpack(pb_utils.get_output_tensor_by_name(response, n)) for n in outputs}
    return run


def _one_bytes(request, name: str, required: bool) -> bytes | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InputError(f"{name}: missing")
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InputError(f"{name}: expected one BYTES element, got {values.size}")
    value = values[0]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def parse_sam_params(raw: bytes | None, defaults: SamParams) -> SamParams:
    if raw is None:
        return defaults
    try:
        return SamParams.from_dict(json.loads(raw.decode("utf-8")), defaults)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"invalid params ({'JSON nested too deeply' if isinstance(exc, RecursionError) else exc})") from exc


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.get("device", "cpu") == "cuda":
            device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        self.models = GraphSam({"sam_encoder": _function("sam_encoder", ["image_embeddings"], device),
                                "sam_decoder": _function("sam_decoder", ["iou_scores", "low_res_masks"], device)},
                               device)
        self.defaults = SamParams(**json.loads(params.get("sam_params", "{}")))
        self.points_per_request = int(params.get("points_per_request", "1024"))

    def _masks(self, request) -> list:
        params = parse_sam_params(_one_bytes(request, "params", required=False), self.defaults)
        image = decode_image(_one_bytes(request, "image", required=True), "image")
        annotations = generate_masks(image, self.models, params, points_per_call=self.points_per_request)
        document = sa1b_document(image.shape[:2], "", annotations)
        return [pb_utils.Tensor("annotations", np.array([[json.dumps(document).encode()]], dtype=object))]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._masks(request)))
            except InputError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"invalid input: {exc}", pb_utils.TritonError.INVALID_ARG)))
            except Exception as exc:  # a failed sub-model or a bug: still one response per request
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
