"""A real Slurm here: munged, slurmctld and slurmd started on free ports with their state in a
temporary folder (a one-node cluster), the project's array job submitted over a copy of the
example set with bad files in it, one task sent SIGTERM mid-run (`scancel --signal=TERM --batch`),
its drain, requeue and second run, then the dependent merge job. The outputs must equal one
runner's uninterrupted run byte for byte, every bad file of every task must be in the merged
failures, the COCO file must load in pycocotools, and nothing may be left behind.

Needs Debian's slurm-wlm and munge and root (the daemons run as root, as in a container); CI
installs them and sets SSA_REQUIRE_SLURM=1, so there the test runs or fails, never skips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.runner import RunnerConfig, annotate_dataset
from model_repository.server import free_port
from ssa.dataset import Shard, listings

REPO = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
COPIES = 5  # 30 images: each of the 3 tasks labels about 10, so a signal after the first lands mid-run
TASKS = 3


def _need_slurm() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    problem = f"no {', '.join(missing)} (apt-get install slurm-wlm munge)" if missing else \
        ("the local cluster's daemons run as root" if os.geteuid() != 0 else None)
    if problem:
        if os.environ.get("SSA_REQUIRE_SLURM") == "1":
            pytest.fail(f"SSA_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}")
        return result.stdout

    def job(self, job: str) -> dict[str, str]:
        """`scontrol show job` as {field: value} ({} once Slurm has forgotten the job)."""
        text = self.run("scontrol", "-o", "show", "job", job, check=False)
        return dict(part.split("=", 1) for part in text.split() if "=" in part)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster of this machine for the module's tests; stopped after them."""
    _need_slurm()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "munge.socket"
    subprocess.run(["munged", f"--key-file={key}", f"--socket={socket_path}", f"--pid-file={root / 'munged.pid'}",
                    f"--log-file={root / 'log' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}", "--force"],
                   check=True, timeout=30)
    host = socket.gethostname().split(".")[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20) - 2048
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=ssatest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={socket_path}", "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "KillWait=30", "MinJobAge=600",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env)
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=60)
        subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%t", check=False):
            assert time.monotonic() < deadline, (root / "log" / "slurmctld.log").read_text()[-3000:]
            time.sleep(1)
        yield cluster
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text())
                os.kill(pid, 15)
            except (OSError, ValueError):
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)


def _dataset(example_dir: Path, root: Path) -> Path:
    """COPIES copies of the example set under other names, and bad files: a corrupt image, a broken
    annotation file, an annotation file without its image, a file that is not a tar."""
    data = root / "slurm_data"
    data.mkdir()
    for k in range(COPIES):
        for p in example_dir.iterdir():
            os.link(p, data / f"c{k}_{p.name}")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    shutil.copy(example_dir / "sa_1.json", data / "broken.json")
    shutil.copy(example_dir / "sa_2.jpg", data / "badjson.jpg")
    (data / "badjson.json").write_text('{"image": {}, "annotations": [')
    shutil.copy(example_dir / "sa_3.json", data / "lonely.json")
    (data / "zz.tar").write_bytes(b"not a tar" * 100)
    return data


def _semantic(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*_semantic.json"))}


def _processes(needle: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def _wait(condition, timeout: float, what: str, logs: Path):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(logs.glob("*"))
                              if p.is_file())
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


def test_array_job_with_a_preempted_task_equals_one_uninterrupted_run(slurm, server, repositories, example_dir,
                                                                      tmp_path):
    from pycocotools.coco import COCO

    data = _dataset(example_dir, tmp_path)
    # what one runner makes of the data, uninterrupted (the shared server, the same repository)
    expected_out = tmp_path / "expected"
    summary, stop = annotate_dataset(RunnerConfig(urls=[server.url], out_dir=expected_out, progress=False),
                                     listings([data]))
    assert stop is None and summary.done == 6 * COPIES  # the example set's copies; the 4 bad files fail
    expected = _semantic(expected_out)
    expected_failures = sorted((f["file"], f["reason"]) for f in summary.failures)
    assert len(expected_failures) == 4

    out = tmp_path / "out"
    env = {**slurm.env, "SSA_DATA": str(data), "SSA_OUT": str(out), "SSA_SERVER": "embedded",
           "SSA_REPOSITORY": str(repositories["cpu"]), "SSA_PYTHON": sys.executable,
           "SSA_DEPLOY": str(REPO / "deploy"), "SSA_ARGS": "--in_flight 2", "SSA_GRACE": "60",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TRANSFORMERS_VERBOSITY": "error"}
    submitted = subprocess.run(["bash", str(REPO / "deploy" / "slurm" / "submit.sh"), str(TASKS), "--cpus-per-task=1"],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    array, merge_job = (out / "logs" / "jobs").read_text().split()
    logs = out / "logs"
    victim = f"{array}_1"
    # task 1's images: a folder is listed whole (its shard is applied per item, by shard_key), so
    # filter here; the wait below must see task 1's own output, not the first of any task's
    shard = Shard(1, TASKS)
    own = [item.key for listing in listings([data]) for item in listing.items if item.shard_key in shard]
    assert 5 <= len(own) < 6 * COPIES

    def first_output():
        if any((out / f"{key}_semantic.json").exists() for key in own):
            return True
        assert slurm.job(victim).get("JobState") in ("PENDING", "RUNNING"), \
            f"task 1 ended before its first output: {slurm.job(victim)}\n" + \
            "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(logs.glob("*")) if p.is_file())
        return False

    # task 1 mid-run: its first image written, most of its share still to do
    _wait(first_output, 600, "task 1's first output", logs)
    slurm.run("scancel", "--signal=TERM", "--batch", victim)
    # its drain ends the run with 75, the batch script requeues it; Slurm holds a requeued job
    # for a while (BeginTime): let it start at once
    _wait(lambda: slurm.job(victim).get("Restarts") == "1" and slurm.job(victim).get("JobState") == "PENDING",
          300, "task 1 requeued", logs)
    first_run = sum((out / f"{key}_semantic.json").exists() for key in own)
    slurm.run("scontrol", "update", f"JobId={victim}", "StartTime=now")
    _wait(lambda: not slurm.run("squeue", "-h", "-j", f"{array},{merge_job}", check=False).strip(), 900,
          "the array and the merge job to end", logs)

    task_log = (logs / f"slurm-{array}_1.out").read_text()
    assert "SIGTERM: draining" in task_log and "requests in flight finished and written" in task_log, task_log
    assert "interrupted; requeued to resume" in task_log and "run 2 on" in task_log, task_log
    assert first_run < len(own), "the signal came after task 1 had finished: it did not test a drain"
    for job in (f"{array}_0", victim, f"{array}_2", merge_job):
        info = slurm.job(job)
        assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (job, info)
    merge_log = (logs / f"slurm-merge-{merge_job}.out").read_text()
    assert "every image is done or failed" in merge_log, merge_log

    assert _semantic(out) == expected  # byte for byte, the interrupted task's images included
    merged = json.loads((out / "failures_all.json").read_text())
    assert sorted((f["file"], f["reason"]) for f in merged) == expected_failures
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getImgIds()) == len(expected)
    assert len(coco.getAnnIds()) == sum(len(json.loads(b)["annotations"]) for b in expected.values())
    assert not [p for p in out.rglob(".*") if p.name.endswith(".part")], "temporary files left behind"
    assert not _processes(str(out)) and not _processes("model_repository serve"), \
        _processes(str(out)) + _processes("model_repository serve")
