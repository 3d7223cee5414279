"""Triton Python model: greedy BLIP captions from image embeddings, batched over the rows of a
request (every mask of an image), each row stopping at its EOS. Requests run one by one, so a
caption never depends on which other requests Triton delivered with it.

The loop owns the text decoder's prefill and step graphs (ONNX Runtime, CUDA provider in the gpu
target) in this process, bound by I/O binding: the key/value cache stays where ONNX Runtime wrote
it (device memory on a GPU) from one step to the next and never crosses a model boundary (for
BLIP-base the cross-attention cache alone is 42 MB per row, which a BLS call per token would move).
The embeddings come in and the token ids go out by DLPack, on the device they arrive on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from ssa.device import from_dlpack
from ssa.graph_models import BlipCaptioner
from ssa.onnx_models import ort_session, session_function


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("intra_op_threads", "2"))
        provider = params.get("execution_provider", "cpu")  # "cuda" in the gpu target
        self.captioner = BlipCaptioner(
            session_function(ort_session(folder / "blip_text_prefill.onnx", threads, provider)),
            session_function(ort_session(folder / "blip_text_step.onnx", threads, provider)),
            int(params["bos_token_id"]), int(params["eos_token_id"]), int(params["pad_token_id"]), int(params["layers"]))
        self.default_max_length = int(params.get("max_length", "20"))

    def caption(self, request) -> torch.Tensor:
        embeds = from_dlpack(pb_utils.get_input_tensor_by_name(request, "image_embeds"))
        limit = pb_utils.get_input_tensor_by_name(request, "max_length")
        length = int(from_dlpack(limit).reshape(-1)[0]) if limit is not None else self.default_max_length
        out = self.captioner(embeds, length)
        ids = torch.full((embeds.shape[0], length), self.captioner.pad, dtype=torch.int64, device=embeds.device)
        ids[:, : out.shape[1]] = out
        return ids

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("token_ids", self.caption(request))]))
            except Exception as exc:  # one response per request, whatever happened
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
