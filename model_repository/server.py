"""The embedded tritonserver: a real Triton 2.51 server from the nvidia-pytriton wheel (Python
backend only), started on 127.0.0.1 with a generated repository, no Docker needed.

tritonserver runs under `reaper.py`, so when it ends for any reason (stopped, crashed, SIGKILLed
by the OOM killer, or the process that started it gone) the Python-backend stubs it started end
with it; and it ends when the reaper itself is killed. It runs with explicit model control, so a
model whose stub process died can be reloaded (`ssa_health` does it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# explicit model control, every model loaded at start: a model whose stub died can be reloaded
# (ssa_health does it); docker-compose.yml and the Kubernetes Job run tritonserver the same way
MODEL_CONTROL = ("--model-control-mode=explicit", "--load-model=*")


class ServerError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError("the embedded server needs the nvidia-pytriton wheel: pip install nvidia-pytriton==0.7.0") from exc
    return Path(pytriton.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_directory(target: Path) -> Path:
    """A backend folder holding the Python backend and the stub for this interpreter."""
    root = _pytriton_dir() / "tritonserver"
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"no Triton Python backend stub for Python {sys.version_info[:2]} in {stub.parent}")
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in (root / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, python / f.name)
    shutil.copy2(stub, python / stub.name)
    return target


class EmbeddedServer:
    """Start tritonserver on loopback with `repository`; a context manager that always stops it.

    grpc_port / http_port: 0 picks free ports. The log goes to `log_path` (default: a temp file).
    """

    def __init__(self, repository: str | Path, grpc_port: int = 0, http_port: int = 0,
                 log_path: str | Path | None = None, ready_timeout: float = 300.0, verbose: int = 0,
                 env: dict[str, str] | None = None):
        self.repository = Path(repository).resolve()
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.ready_timeout = ready_timeout
        self.verbose = verbose
        self.extra_env = dict(env or {})  # e.g. PYTHONPATH of another checkout (benchmarks' baseline)
        self._tmp = tempfile.TemporaryDirectory(prefix="ssa-triton-")
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "tritonserver.log"
        self.process: subprocess.Popen | None = None  # the reaper, tritonserver's parent
        self._pidfile = Path(self._tmp.name) / "tritonserver.pid"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        backends = backend_directory(Path(self._tmp.name) / "backends")
        return [str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
                "--http-address=127.0.0.1", "--allow-metrics=false", "--allow-gpu-metrics=false",
                "--strict-readiness=true", "--exit-on-error=true", f"--log-verbose={self.verbose}",
                *MODEL_CONTROL,
                "--backend-config=python,shm-default-byte-size=67108864",
                "--backend-config=python,shm-growth-byte-size=67108864"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
        # the Python models run with this interpreter's environment (and so import `ssa`)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.extra_env)
        return env

    def start(self) -> EmbeddedServer:
        if not (self.repository / "ssa_engine" / "config.pbtxt").is_file():
            raise ServerError(f"{self.repository} is not a generated model repository (no ssa_engine/config.pbtxt)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        reaper = [sys.executable, str(Path(__file__).with_name("reaper.py")), str(self._pidfile), "--"]
        self.process = subprocess.Popen(reaper + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=self.environment(), start_new_session=True)
        log.close()
        self.wait_ready()
        return self

    @property
    def pid(self) -> int | None:
        """tritonserver's pid (None before it started)."""
        try:
            return int(self._pidfile.read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        """Whether tritonserver (under its reaper) is still running."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Both endpoints open, ssa_engine ready, and every Python model's stub alive (`ssa_health`,
        where the repository has it)."""
        import tritonclient.grpc as grpcclient

        from client.engine_client import HEALTH_MODEL, health_inputs

        try:
            # both endpoints: the HTTP one (the probes' and perf_analyzer's) may open after gRPC
            socket.create_connection(("127.0.0.1", self.http_port), timeout=2).close()
            with grpcclient.InferenceServerClient(self.url) as client:
                if not (client.is_server_ready() and client.is_model_ready("ssa_engine")):
                    return False
                if (self.repository / HEALTH_MODEL / "config.pbtxt").is_file():
                    client.infer(HEALTH_MODEL, health_inputs(), client_timeout=30)
                return True
        except Exception:  # not listening yet, or a model that cannot serve
            return False

    def restart(self) -> None:
        """Stop everything the server started and start it again on the same ports."""
        self.stop()
        self.start()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.process.returncode} while starting; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver not ready after {self.ready_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> None:
        """Stop tritonserver and everything it started (the reaper does it; SIGKILL after `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            if self.pid is not None:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def kill(self, wait: float = 30.0) -> None:
        """SIGKILL tritonserver, as the OOM killer would (fault-injection tests); returns when the
        reaper has ended what it left behind."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.stop()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
