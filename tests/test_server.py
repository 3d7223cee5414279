"""The embedded tritonserver leaves nothing behind: SIGKILLed (as the OOM killer does) or orphaned
by the process that started it, its Python-backend stubs end with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_repository.server import EmbeddedServer


def descendants(pid: int) -> set[int]:
    """Every living process below `pid`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


HELPER_MODEL = """
import signal, subprocess
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # a worker process of the kind model code starts (tokenizer pools, data loaders) that
        # ignores SIGTERM and watches no parent: without a reaper it outlives the server
        self.worker = subprocess.Popen(["sleep", "600"],
                                       preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros(1, np.float32))]) for _ in requests]
"""
HELPER_CONFIG = """name: "helper"
backend: "python"
max_batch_size: 0
input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def test_sigkilled_tritonserver_leaves_no_process(repositories, tmp_path):
    """The tiny repository plus a model whose worker process ignores SIGTERM; tritonserver
    SIGKILLed: every stub and the worker are gone."""
    repo = tmp_path / "repository"
    shutil.copytree(repositories["cpu"], repo)
    (repo / "helper" / "1").mkdir(parents=True)
    (repo / "helper" / "config.pbtxt").write_text(HELPER_CONFIG)
    (repo / "helper" / "1" / "model.py").write_text(HELPER_MODEL)
    shm = Path("/dev/shm")
    before = {p.name for p in shm.glob("triton_python_backend_shm_region_*")}
    server = EmbeddedServer(repo, log_path=tmp_path / "triton.log").start()
    workers: set[int] = set()
    try:
        regions = {p.name for p in shm.glob("triton_python_backend_shm_region_*")} - before
        assert regions, "the Python backend's shared memory is in /dev/shm"
        triton = server.pid
        started = descendants(triton)
        assert len(started) >= 12, "a stub per model instance and the helper's worker"
        workers = {p for p in started if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep")}
        assert len(workers) == 1
        os.kill(triton, signal.SIGKILL)
        server.process.wait(60)
        assert wait_gone(started | {triton}, 10) == set()
        # its shared-memory regions would hold memory until reboot
        assert not [r for r in regions if (shm / r).exists()]
    finally:
        server.stop()
        for p in workers:  # nothing of this test may outlive it, even when it fails
            if alive(p):
                os.kill(p, signal.SIGKILL)


STARTER = """
import json, sys, time
import pytest

from model_repository.server import EmbeddedServer
server = EmbeddedServer(sys.argv[1], log_path=sys.argv[2]).start()
print(json.dumps({"reaper": server.process.pid, "triton": server.pid}), flush=True)
time.sleep(600)
"""


def test_server_ends_when_the_process_that_started_it_dies(repositories, tmp_path):
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(repositories["cpu"]), str(tmp_path / "t.log")],
                               stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        pids = json.loads(starter.stdout.readline())
        everything = descendants(pids["reaper"]) | {pids["reaper"]}
        assert pids["triton"] in everything and len(everything) >= 12
        starter.kill()  # SIGKILL: no cleanup code of the starter runs
        starter.wait()
        assert wait_gone(everything, 60) == set()
    finally:
        if starter.poll() is None:
            starter.kill()


def test_server_ends_when_its_reaper_is_sigkilled(repositories, tmp_path):
    """The reaper itself SIGKILLed (nothing of its own runs): tritonserver gets its parent-death
    signal, stops, and its stubs go with it; nothing serves afterwards."""
    import tritonclient.grpc as grpcclient

    server = EmbeddedServer(repositories["cpu"], log_path=tmp_path / "triton.log").start()
    try:
        everything = descendants(server.process.pid)
        assert server.pid in everything and len(everything) >= 12
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert wait_gone(everything, 45) == set()
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="UNAVAILABLE|failed to connect|Connection refused"):
            grpcclient.InferenceServerClient(server.url).is_server_ready(client_timeout=5)
    finally:
        for p in descendants(server.process.pid) | ({server.pid} if server.pid else set()):
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_ssa_health_tells_a_dead_stub_and_reloads_its_model(repositories, example_dir, tmp_path):
    """Triton keeps a model "ready" after its stub died; ssa_health does not: over HTTP it answers
    503 naming the instance and reloads the model, after which the model serves again."""
    import urllib.error
    import urllib.request

    import tritonclient.grpc as grpcclient

    from client.engine_client import annotate
    from ssa.stub_health import living_instances

    with EmbeddedServer(repositories["cpu"], log_path=tmp_path / "triton.log") as server:
        probe = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/ssa_health/infer",
                                       data=b'{"inputs": []}', method="POST")
        assert json.loads(json.loads(urllib.request.urlopen(probe).read())["outputs"][0]["data"][0]) == {"healthy": True}
        client = grpcclient.InferenceServerClient(server.url)
        victim = living_instances(server.pid)["clip_image_0_0"]
        os.kill(victim, signal.SIGKILL)
        assert wait_gone({victim}, 10) == set()
        assert client.is_model_ready("clip_image")  # Triton's own readiness does not see it
        image, document = (example_dir / "sa_2.jpg").read_bytes(), (example_dir / "sa_2.json").read_bytes()
        with pytest.raises(Exception, match="is not healthy"):
            annotate(client, image, document)
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(probe)
        assert unhealthy.value.code == 503
        reason = json.loads(unhealthy.value.read())["error"]
        assert "clip_image: clip_image_0_0" in reason and "reloaded clip_image" in reason, reason
        assert urllib.request.urlopen(probe).status == 200
        assert living_instances(server.pid)["clip_image_0_0"] != victim
        assert len(annotate(client, image, document)) == len(json.loads(document)["annotations"])
        assert server.healthy()
