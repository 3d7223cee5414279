"""Requests to `ssa_engine` over gRPC: one image (encoded bytes) + its SA-1B document in, one
`MaskLabel` per annotation out."""

from __future__ import annotations

import json
import zlib

import numpy as np

from ssa.params import EngineParams, MaskLabel
from ssa.vocabulary import Vocabulary

MODEL = "ssa_engine"
SAM_MODEL = "sam_masks"
HEALTH_MODEL = "ssa_health"  # answers at once: every Python model's stub alive, or UNAVAILABLE


class EngineRequestError(RuntimeError):
    """The server answered the request with an error (e.g. invalid input)."""


def params_bytes(params: EngineParams | None, vocabulary: Vocabulary | None = None) -> bytes | None:
    """The request's "params" element: the engine parameters and the vocabulary, as JSON."""
    if params is None and vocabulary is None:
        return None
    values = (params or EngineParams()).to_dict()
    if vocabulary is not None:
        values["vocabulary"] = vocabulary.to_json()
    return json.dumps(values, ensure_ascii=False).encode("utf-8")


def build_inputs(image_bytes: bytes, document_bytes: bytes, params: EngineParams | None = None,
                 vocabulary: Vocabulary | None = None, encoded_params: bytes | None = None):
    """The request's input tensors. `encoded_params` (from `params_bytes`) saves re-encoding a
    large vocabulary for every image."""
    import tritonclient.grpc as grpcclient

    tensors = [("image", image_bytes), ("annotations", document_bytes)]
    encoded = encoded_params if encoded_params is not None else params_bytes(params, vocabulary)
    if encoded is not None:
        tensors.append(("params", encoded))
    inputs = []
    for name, value in tensors:
        t = grpcclient.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=object))
        inputs.append(t)
    return inputs


def health_inputs():
    """An `ssa_health` request (its one input is optional; tritonclient sends none)."""
    return []


def sam_inputs(image_bytes: bytes, params: bytes | None = None):
    """A `sam_masks` request: the image, and SAM's parameters as JSON (optional)."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value in (("image", image_bytes), ("params", params)):
        if value is not None:
            t = grpcclient.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([value], dtype=object))
            inputs.append(t)
    return inputs


def image_id(stem: str) -> int:
    """The image id written into SAM's SA-1B document: the number in an SA-1B stem ("sa_223775"),
    else a stable hash of the stem."""
    digits = stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else zlib.crc32(stem.encode("utf-8")) & 0x7FFFFFFF


def text_of(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def parse_result(result) -> list[MaskLabel]:
    """MaskLabels from an InferResult of `ssa_engine` (batch of one)."""
    names = result.as_numpy("class_name")[0]
    proposals = result.as_numpy("class_proposals")[0]
    scores = result.as_numpy("proposal_scores")[0]
    votes = result.as_numpy("vote_share")[0]
    captions = result.as_numpy("caption")[0]
    labels = []
    for i in range(names.shape[0]):
        props = [text_of(p) for p in proposals[i] if text_of(p)]
        labels.append(MaskLabel(text_of(names[i]), props, [float(s) for s in scores[i][: len(props)]],
                                float(votes[i]), text_of(captions[i])))
    return labels


def runtime_of(result) -> dict | None:
    """What ran the server's models for this response (its `runtime` output), None from a server
    of an earlier version."""
    value = result.as_numpy("runtime")
    return json.loads(text_of(value.reshape(-1)[0])) if value is not None and value.size else None


def annotate(client, image_bytes: bytes, document_bytes: bytes, params: EngineParams | None = None,
             timeout: float | None = None, vocabulary: Vocabulary | None = None) -> list[MaskLabel]:
    """One synchronous request; raises EngineRequestError with the server's message."""
    from tritonclient.utils import InferenceServerException

    try:
        result = client.infer(MODEL, build_inputs(image_bytes, document_bytes, params, vocabulary),
                              outputs=None, client_timeout=timeout)
    except InferenceServerException as exc:
        raise EngineRequestError(exc.message() or str(exc)) from exc
    return parse_result(result)
