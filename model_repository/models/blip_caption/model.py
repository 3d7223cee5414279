"""Triton Python model: greedy BLIP captions from image embeddings, batched over the rows of a
request (every mask of an image), each row stopping at its EOS. Requests run one by one, so a
caption never depends on which other requests Triton delivered with it.

The loop owns the text decoder's prefill and step graphs in this process: OpenVINO in the cpu
target (parameter `runtime`), ONNX Runtime with I/O binding otherwise (CUDA provider in the gpu
target). The key/value cache is plain tensors the loop keeps and hands back to the step graph in
place each token (OpenVINO `share_inputs`, ONNX Runtime I/O binding; device memory on a GPU): it
never crosses a model boundary and is never copied (for BLIP-base the cross-attention cache alone
is 42 MB per row in f32, which a BLS call per token, or a copy per token, would move). On OpenVINO
the prefill's cache is read where the prefill wrote it, and in bf16 it is bf16 (half the bytes;
`ssa.openvino_models`). Not OpenVINO's
stateful form: finished rows leave the batch between steps (`index_select` on the cache), which a
state held inside the compiled model cannot do without a copy through its state API.
The embeddings come in and the token ids go out by DLPack, on the device they arrive on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from ssa.device import from_dlpack, instance_device
from ssa.graph_models import BlipCaptioner


def text_graphs(folder: Path, params: dict[str, str], device_id: int = 0):
    """(prefill, step) tensor functions on the runtime the config names."""
    threads = int(params.get("intra_op_threads", "2"))
    names = ("blip_text_prefill", "blip_text_step")
    if params.get("runtime", "onnxruntime") == "openvino":
        from ssa.openvino_models import caption_graphs

        cache = params.get("cache_dir", "openvino_cache")
        return caption_graphs(*(folder / f"{n}.onnx" for n in names), threads, params.get("precision", "fp32"),
                              folder.parent / cache if cache else None)
    from ssa.onnx_models import ort_session, session_function

    provider = params.get("execution_provider", "cpu")  # "cuda" in the gpu target
    return tuple(session_function(ort_session(folder / f"{n}.onnx", threads, provider, device_id)) for n in names)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        # this instance's GPU (multi-GPU nodes), made current; the provider bound to the same GPU
        self.device = instance_device(params.get("execution_provider", "cpu") == "cuda",
                                      args.get("model_instance_device_id", 0))
        self.captioner = BlipCaptioner(
            *text_graphs(folder, params, self.device.index or 0), int(params["bos_token_id"]), int(params["eos_token_id"]), int(params["pad_token_id"]), int(params["layers"]))
        self.default_max_length = int(params.get("max_length", "20"))

    def caption(self, request) -> torch.Tensor:
        # a request's tensors may come on another GPU than this instance's (python_backend: input
        # tensor device placement): they move to the instance's device first
        embeds = from_dlpack(pb_utils.get_input_tensor_by_name(request, "image_embeds")).to(self.device)
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
