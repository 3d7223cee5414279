"""Triton Python model serving one ONNX file with OpenVINO Runtime (the `cpu` target's default
backend): bf16 on CPUs with bf16 matrix units where the deployment asks for it, f32 otherwise.

Parameters (config.pbtxt): `intra_op_threads` (OpenVINO's INFERENCE_NUM_THREADS), `precision`
(fp32 or bf16; bf16 on a CPU without bf16 units runs fp32 and logs that it does), `cache_dir`
(compiled blobs; relative to the model's folder; a restart loads them instead of compiling).
Inputs are read in place from Triton's shared memory; each request runs on its own, so a result
never depends on which other requests the scheduler delivered with it."""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ssa.openvino_models import OpenVinoGraph, resolve_precision


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        precision = params.get("precision", "fp32")
        runs, note = resolve_precision(precision)
        if note:
            pb_utils.Logger.log_warn(f"{args['model_name']}: {note}")
        cache = params.get("cache_dir", "openvino_cache")
        self.graph = OpenVinoGraph(folder / args["model_version"] / "model.onnx", int(params.get("intra_op_threads", "2")),
                                   precision, folder / cache if cache else None, self.inputs + self.outputs)
        pb_utils.Logger.log_info(f"{args['model_name']}: OpenVINO, {runs}")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                result = self.graph(feed)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, result[n]) for n in self.outputs]))
            except Exception as exc:  # one response per request, whatever happened
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
