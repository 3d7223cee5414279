"""Triton Python model `ssa_health`: whether every Python model of this repository can serve.

Triton 2.51 / 24.12 keeps a model "ready" after its stub process died, and fails its requests with
"Stub process ... is not healthy" from then on (`ssa.stub_health` explains). A request here checks
the stubs of every Python model of the repository: all alive, it answers `{"healthy": true}`; a
stub gone, it answers UNAVAILABLE naming the dead instances, and, when the server runs with explicit
model control (`--model-control-mode=explicit`, as the project starts it), reloads those models so
the next check finds them serving again (unloaded, then loaded: a plain load of a loaded
model does nothing). Nothing is queued behind the other models, so the probe
answers at once however busy the server is: the compose healthcheck, the Kubernetes probes and the
batch runner all ask it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ssa.stub_health import StubWatch


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.repository = Path(args["model_repository"]).parent
        self.watch = StubWatch(self.repository, os.getppid())
        self.heal = params.get("heal", "1") == "1"

    def _check(self) -> dict:
        dead = self.watch.dead_models()
        if not dead:
            return {"healthy": True}
        reloaded = []
        if self.heal and self.watch.baseline is not None:  # once fully up: never while models still load
            for model in sorted(dead):
                try:  # a plain load of a loaded model is a no-op (Triton 2.51): unload, then load
                    pb_utils.unload_model(model_name=model)
                    pb_utils.load_model(model_name=model)
                    reloaded.append(model)
                except Exception as exc:  # not in explicit model control, or the load failed
                    pb_utils.Logger.log_warn(f"ssa_health: could not reload {model}: {exc}")
        return {"healthy": False, "dead": dead, "reloaded": reloaded}

    def execute(self, requests):
        responses = []
        for _ in requests:
            status = self._check()
            if status["healthy"]:
                out = pb_utils.Tensor("status", np.array([json.dumps(status).encode()], dtype=object))
                responses.append(pb_utils.InferenceResponse([out]))
            else:
                text = "; ".join(f"{m}: {', '.join(names)}" for m, names in sorted(status["dead"].items()))
                done = f" (reloaded {', '.join(status['reloaded'])})" if status["reloaded"] else ""
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"unhealthy: stub process gone for {text}{done}", pb_utils.TritonError.UNAVAILABLE)))
        return responses
