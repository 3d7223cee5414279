"""Run tritonserver so that nothing it started outlives it.

    python reaper.py PIDFILE -- tritonserver ARGS...

Triton's Python backend runs each model instance in a stub process. When tritonserver dies
without cleaning up (SIGKILL, the OOM killer), its stubs can keep running for minutes, holding
memory and shared-memory regions. This small supervisor, started by `EmbeddedServer`:

- starts tritonserver in a process group of its own (its stubs inherit it) and writes its pid to
  PIDFILE;
- is a child subreaper, so stubs orphaned by tritonserver's death become its children;
- when tritonserver ends, for any reason, terminates that process group and any orphan left
  (SIGTERM, then SIGKILL after a grace period), removes the Python backend's shared-memory
  regions that it created and nobody maps any more (a killed server leaves them in /dev/shm,
  where they hold memory until reboot), then exits with tritonserver's status;
- on SIGTERM/SIGINT, or when the process that started it dies (PR_SET_PDEATHSIG), stops
  tritonserver the same way;
- when it is itself SIGKILLed (nothing of its own then runs), tritonserver gets SIGTERM from the
  kernel (its PR_SET_PDEATHSIG, set before exec), shuts down and stops its stubs, which also
  leave by themselves once their parent is gone (each checks every 300 ms).

It imports nothing but the standard library: it must start and stay small whatever the
environment.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 30.0  # as long as tritonserver waits for in-flight requests by default


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort
        pass


def _children(pid: int) -> dict[int, str]:
    """{pid: state} of the processes whose parent is `pid` (orphans re-parented to this subreaper
    included); state "Z" is a zombie."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 1 and int(fields[1]) == pid:
            found[int(entry)] = fields[0]
    return found


def _living_orphans(child: subprocess.Popen) -> list[int]:
    """Children of this process other than tritonserver, zombies reaped on the way."""
    living = []
    for pid, state in _children(os.getpid()).items():
        if pid == child.pid:
            continue
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        else:
            living.append(pid)
    return living


def _signal_all(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)  # tritonserver and the stubs it started
    except ProcessLookupError:
        pass
    for pid in _living_orphans(child):  # any that left the group
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _all_gone(child: subprocess.Popen) -> bool:
    if child.poll() is None or _living_orphans(child):
        return False
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _stop_everything(child: subprocess.Popen, grace: float) -> None:
    """SIGTERM the group and every orphan, wait up to `grace` seconds, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_all(child, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _all_gone(child):
                return
            time.sleep(0.05)


SHM_DIR = "/dev/shm"
SHM_PREFIX = "triton_python_backend_shm_region_"


def _mapped_shm() -> set[str]:
    """Shared-memory files some living process maps."""
    mapped = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/maps", "rb") as f:
                    for line in f:
                        if SHM_PREFIX.encode() in line:
                            mapped.add(line.rsplit(b"/", 1)[-1].strip().decode(errors="replace"))
            except OSError:
                continue
    return mapped


def remove_orphan_regions(since: float) -> list[str]:
    """Remove the Python backend's shared-memory regions created after `since` (a time.time())
    that no living process maps; their names."""
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX)]
    except OSError:
        return []
    mapped = _mapped_shm()
    removed = []
    for name in names:
        path = os.path.join(SHM_DIR, name)
        try:
            if name not in mapped and os.stat(path).st_mtime >= since:
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: reaper.py PIDFILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    pidfile, command = argv[0], argv[2:]
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if os.getppid() != parent:  # the starter died before PDEATHSIG was set
        return 1
    started = time.time() - 1.0
    # the parent-death signal is set in the child before exec, from this (single-threaded) process,
    # so it fires only when the reaper dies
    child = subprocess.Popen(command, process_group=0,
                             preexec_fn=lambda: _prctl(PR_SET_PDEATHSIG, signal.SIGTERM))
    with open(pidfile + ".part", "w") as f:
        f.write(str(child.pid))
    os.replace(pidfile + ".part", pidfile)
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    _stop_everything(child, GRACE_SECONDS)
    child.wait()
    remove_orphan_regions(started)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
