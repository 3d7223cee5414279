"""Triton Python model serving one ONNX file with ONNX Runtime (the `cpu` target: the embedded
tritonserver has only the Python backend). On GPU nodes the same file is served natively by the
`onnxruntime_onnx` platform instead. Requests are batched by Triton's dynamic batcher."""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ssa.batching import run_batched
from ssa.onnx_models import ort_session, run_session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort_session(folder / "model.onnx", int(params.get("intra_op_threads", "2")))
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        tensors = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = []
        for result in run_batched(tensors, lambda batch: run_session(self.session, batch)):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(result).__name__}: {result}")))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, result[n]) for n in self.outputs]))
        return responses
