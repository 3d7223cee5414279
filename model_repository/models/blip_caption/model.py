"""Triton Python model: greedy BLIP captions from image embeddings, batched over every row of the
requests Triton batched together, each row stopping at its EOS.

The loop owns the text decoder's prefill and step graphs (ONNX Runtime) in this process, so the
key/value cache never crosses a model boundary: for BLIP-base the cross-attention cache alone is
42 MB per row, which BLS calls would copy at every token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ssa.batching import run_batched
from ssa.onnx_models import BlipCaptioner, ort_session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("intra_op_threads", "2"))
        self.captioner = BlipCaptioner(
            ort_session(folder / "blip_text_prefill.onnx", threads), ort_session(folder / "blip_text_step.onnx", threads),
            int(params["bos_token_id"]), int(params["eos_token_id"]), int(params["pad_token_id"]), int(params["layers"]))
        self.default_max_length = int(params.get("max_length", "20"))

    def execute(self, requests):
        tensors = []
        for r in requests:
            embeds = pb_utils.get_input_tensor_by_name(r, "image_embeds").as_numpy()
            limit = pb_utils.get_input_tensor_by_name(r, "max_length")
            length = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else self.default_max_length
            tensors.append({"image_embeds": embeds, "max_length": np.full((embeds.shape[0], 1), length, np.int64)})

        def caption(batch):
            lengths = batch["max_length"][:, 0]
            ids = np.full((lengths.shape[0], int(lengths.max())), self.captioner.pad, np.int64)
            for length in np.unique(lengths):
                rows = np.flatnonzero(lengths == length)
                out = self.captioner(batch["image_embeds"][rows], int(length))
                ids[rows, : out.shape[1]] = out
            return {"token_ids": ids}

        responses = []
        for result in run_batched(tensors, caption):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(result).__name__}: {result}")))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("token_ids", result["token_ids"])]))
        return responses
