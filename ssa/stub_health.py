"""Which Python-backend model instances of a running tritonserver have lost their stub process.

Triton's Python backend runs each model instance in a stub process. When a stub dies (the kernel's
OOM killer, a segfault in a library), Triton 2.51 / 24.12 neither restarts it nor reports the model
unready: `is_model_ready` stays true and every request fails with "Stub process '<instance>' is not
healthy" (python_backend r24.10 and r24.12: the restart is a TODO, and the backend has no
`TRITONBACKEND_ModelInstanceReady`, which later releases added). So liveness is read here from the
processes themselves: a stub's command line is

    triton_python_backend_stub MODEL_PATH SHM_REGION SHM_SIZE SHM_GROWTH PARENT_PID PYTHON_LIB
                               IPC_HANDLE INSTANCE_NAME RUNTIME_MODELDIR

(python_backend's stub_launcher.cc), so the living instances of a server are the stubs whose
PARENT_PID is the server's pid. The `ssa_health` model checks them against the Python models of
the repository it belongs to, and reloads (explicit model control) the models whose stubs died.

Standard library only: it runs inside a stub and in the runner.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

STUB = "triton_python_backend_stub"
INSTANCE = re.compile(r"^(?P<model>.+)_\d+_\d+$")


def python_models(repository: str | Path) -> dict[str, int]:
    """{model: instances it starts at least} for every Python-backend model of a repository
    (instance_group counts; a KIND_GPU group starts at least its count, once per GPU)."""
    found = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text()
        if not re.search(r'^backend:\s*"python"', text, re.M):
            continue
        name = re.search(r'^name:\s*"([^"]+)"', text, re.M)
        counts = [int(c) for c in re.findall(r"^\s*count:\s*(\d+)", text, re.M)] or [1]
        found[name.group(1) if name else config.parent.name] = sum(counts)
    return found


def living_instances(server_pid: int, proc: str = "/proc") -> dict[str, int]:
    """{instance name: stub pid} of the living (not zombie) stubs started by `server_pid`."""
    living = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"{proc}/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        if len(args) < 9 or not args[0].endswith(STUB.encode()) or stat[stat.rfind(")") + 2 :].startswith("Z"):
            continue
        if args[5] == str(server_pid).encode():
            living[args[8].decode(errors="replace")] = int(entry)
    return living


class StubWatch:
    """The Python models of a repository whose stubs are gone, for one server process.

    The first check at which every model has its stubs sets the baseline of instance names; a
    model is dead when one of those names, or any stub at all of its minimum count, is missing.
    """

    def __init__(self, repository: str | Path, server_pid: int, proc: str = "/proc"):
        self.expected = python_models(repository)
        self.server_pid, self.proc = server_pid, proc
        self.baseline: set[str] | None = None

    def dead_models(self) -> dict[str, list[str]]:
        """{model: [its missing instance names, or "<n> of <m> stubs" when unnamed]}."""
        living = set(living_instances(self.server_pid, self.proc))
        per_model: dict[str, set[str]] = {m: set() for m in self.expected}
        for name in living:
            match = INSTANCE.match(name)
            if match and match["model"] in per_model:
                per_model[match["model"]].add(name)
        dead: dict[str, list[str]] = {}
        for model, minimum in self.expected.items():
            missing = sorted(n for n in (self.baseline or ()) if INSTANCE.match(n)["model"] == model
                             and n not in per_model[model])
            if missing:
                dead[model] = missing
            elif len(per_model[model]) < minimum:
                dead[model] = [f"{len(per_model[model])} of {minimum} stubs"]
        if not dead and self.baseline is None:
            self.baseline = set().union(*per_model.values())
        return dead
