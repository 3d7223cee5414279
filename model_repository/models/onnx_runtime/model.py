"""Triton Python model serving one ONNX file with ONNX Runtime (the `cpu` target: the embedded
tritonserver has only the Python backend). On GPU nodes the same file is served natively by the
`onnxruntime_onnx` platform or as a TensorRT plan instead.

Tensors come in and go out by DLPack (no NumPy copy, no torch in this process). Each request runs on its own: a result never
depends on which other requests Triton's scheduler delivered with it, so outputs are the same
whatever the load (within one image, `ssa_engine` already sends every mask in one request)."""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ssa.onnx_models import ort_session, run_bound


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort_session(folder / "model.onnx", int(params.get("intra_op_threads", "2")))
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {n: pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs}
                result = run_bound(self.session, {n: t.to_dlpack() for n, t in inputs.items()})
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor.from_dlpack(n, result[n]) for n in self.outputs]))
            except Exception as exc:  # one response per request, whatever happened
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
