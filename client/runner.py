"""The batch runner: a whole dataset through one or more Triton servers' `ssa_engine` over gRPC.

- Keeps `in_flight` requests per server going (asyncio gRPC), fed from a bounded queue, so the
  servers stay busy and memory stays flat on any dataset size.
- Outputs mirror the inputs (`ssa.dataset`: `<out_dir>/<input>/<sub-folder or tar>/<stem>_semantic.json`),
  so no folder holds more than one input folder's or tar's images and two images never share a path.
- Resumable: an image whose `<key>_semantic.json` exists is skipped; outputs are written to a
  temporary name and renamed, so a file is whole or absent. Outputs hold nothing that depends on
  the run (no address, time or order), so a resumed run equals an uninterrupted one byte for byte.
- Drains on SIGTERM / SIGINT (a scheduler's preemption or time limit, Ctrl-C): no new image is
  taken, the requests in flight finish within `grace` seconds and are written, the failures file
  and the summary are written, and the run exits with EXIT_INTERRUPTED (75: run again to resume).
  A second signal, or the grace running out, abandons the requests still in flight at once;
  nothing is half-written either way (a file being written is finished first).
- Faults: a server that is unreachable or restarting is retried with backoff until it has been
  down `retry_limit` seconds; then its work goes to the other servers, and when none is left the
  run stops with a clear message (exit status 3). A bad file is recorded in the failures file
  with the reason and the run goes on; so is an image the server refuses as too large for it.
- A dead model process ("Stub process ... is not healthy": the OOM killer, a segfault) is the
  server's fault, not the image's: the image is retried once the server is healthy again. A server
  the runner started (`--embedded`) is restarted; another server is probed (`ssa_health`, which
  reloads the dead model) with backoff, and given up like an unreachable one if it stays
  unhealthy. Only an image on which a model process dies twice is failed (it may be what kills it).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from client.engine_client import (
    HEALTH_MODEL,
    MODEL,
    SAM_MODEL,
    build_inputs,
    health_inputs,
    image_id,
    params_bytes,
    parse_result,
    runtime_of,
    sam_inputs,
    text_of,
)
from ssa.dataset import Item, Listing, Shard, TarMember
from ssa.errors import InputError, read_input
from ssa.layout import check_layout, remove_stale_parts
from ssa.limits import document_limit
from ssa.outputs import (
    RunSummary,
    annotated_document,
    is_done,
    output_name_problem,
    output_paths,
    provenance,
    write_failures,
    write_outputs,
)
from ssa.params import EngineParams, SamParams
from ssa.sa1b import parse_document, write_bytes_atomic
from ssa.vocabulary import Vocabulary

ENGINE_NAME = "triton ssa_engine"
EXPECTED_INPUTS = {"image": "BYTES", "annotations": "BYTES", "params": "BYTES"}
EXPECTED_OUTPUTS = {"class_name": "BYTES", "class_proposals": "BYTES", "proposal_scores": "FP32",
                    "vote_share": "FP32", "caption": "BYTES"}
# gRPC statuses and server messages that mean "not now" rather than "bad request"
# what one gRPC request can carry (tritonclient's and Triton's message limit, 2 GiB), less room
# for the parameters: an image and its annotation file over it are refused before they are read
MAX_REQUEST_BYTES = (2**31 - 1) - (1 << 20)  # tritonclient.grpc's MAX_GRPC_MESSAGE_SIZE
TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "RESOURCE_EXHAUSTED")
TRANSIENT_TEXT = ("stub process", "is not healthy", "not ready", "unknown model", "failed to connect",
                  "connection reset", "socket closed", "is not found", "unavailable")
MAX_STRIKES = 3  # transient failures of one image on a server that stays up before the image is failed
MAX_DEATHS = 2  # model processes dead on one image before the image is failed (it may be what kills them)
# Triton's Python backend when a model's stub process is gone (python_backend stub_launcher.cc, python_be.cc)
DEAD_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy|Stub process is not healthy|"
                       r"Failed to obtain the health mutex")
EXIT_FAILURES, EXIT_MISMATCH, EXIT_SERVERS_DOWN = 1, 2, 3
EXIT_UNWRITABLE = 4  # the outputs could not be written (disk full, permissions): fix it and rerun to resume
EXIT_INTERRUPTED = 75  # stopped by SIGTERM / SIGINT after draining: run again to resume (sysexits' EX_TEMPFAIL)
# seconds the requests in flight get after SIGTERM: under Slurm's and Kubernetes' default 30 s
# between SIGTERM and SIGKILL (KillWait, terminationGracePeriodSeconds), with time left to exit
DEFAULT_GRACE = 20.0
FAILURES_EVERY = 10.0  # seconds between rewrites of the failures file during a run (`ssa status` reads it)
FAILED, GIVEN_UP, INTERRUPTED = object(), object(), object()  # outcomes of a request other than its result


class ServersUnavailable(RuntimeError):
    """No server could be reached within the retry limit."""


class OutputUnwritable(RuntimeError):
    """An output could not be written (disk full, permissions, a read-only folder): the run stops,
    as every later image would fail the same way; what was written is complete (atomic writes)."""

    def __init__(self, path, exc: OSError):
        super().__init__(f"stopped: cannot write {path} ({exc.strerror or exc}); free space or fix the "
                         f"folder's permissions, then rerun to resume")


class ServerMismatch(RuntimeError):
    """A server's `ssa_engine` does not take what this client sends, or servers disagree."""


class Interrupted(RuntimeError):
    """The run was stopped by a signal after draining; rerun to resume."""


class ListingStopped(RuntimeError):
    """Listing the inputs failed part-way: what was listed before was done; rerun to resume."""


@dataclass
class RunnerConfig:
    urls: list[str]
    out_dir: Path
    params: EngineParams = field(default_factory=EngineParams)
    vocabulary: Vocabulary | None = None  # the user's class names (merged or only), sent with every request
    sam_params: SamParams = field(default_factory=SamParams)  # for images without annotations
    force_sam: bool = False  # SAM's masks even where an annotation file exists
    in_flight: int = 2  # requests kept in flight per server
    shard: Shard = field(default_factory=Shard)
    save_img: bool = False
    overwrite: bool = False
    retry_limit: float = 300.0  # seconds a server may stay unreachable (or unhealthy) before it is given up
    grace: float = DEFAULT_GRACE  # seconds the requests in flight get to finish after SIGTERM / SIGINT
    request_timeout: float | None = None  # seconds; None waits as long as the server works
    progress: bool = True
    # servers this runner started (url -> an `EmbeddedServer`: alive(), restart()): restarted when
    # they die or a model process of theirs does
    owned: dict = field(default_factory=dict)


def _status(exc) -> str:
    status = exc.status() if hasattr(exc, "status") else None
    return str(status or "").replace("StatusCode.", "")


def error_text(exc: Exception) -> str:
    """The message of a tritonclient InferenceServerException (or any exception)."""
    return (exc.message() if hasattr(exc, "message") else None) or str(exc) or type(exc).__name__


def is_transient(exc) -> bool:
    """Whether a failed request should be retried (server down, restarting, model reloading)."""
    text = error_text(exc)
    if _status(exc) == "INVALID_ARGUMENT" or text.startswith("invalid input:"):  # the request's own fault
        return False
    return _status(exc) in TRANSIENT_STATUS or any(t in text.lower() for t in TRANSIENT_TEXT)


def dead_models(exc) -> list[str] | None:
    """The models whose stub process died, from a failed request's message ([] when it names no
    instance); None when the failure is not a dead model process."""
    found = [m["instance"] for m in DEAD_STUB.finditer(error_text(exc))]
    if not found:
        return None
    return sorted({re.sub(r"_\d+_\d+$", "", name) for name in found if name})


def failure_of(item: Item, message: str) -> dict[str, str]:
    """The failures-file entry for a request the server refused: the file it names, and why.

    The server names the tensor ("image: unreadable image ..." or "annotations: annotation
    id=3: ..."); the entry names the item's file instead.
    """
    message = message.removeprefix("invalid input: ")
    for tensor, path in (("image", item.image), ("annotations", item.annotations)):
        if path is not None and message.startswith(f"{tensor}: "):
            return {"file": str(path), "reason": message[len(tensor) + 2:]}
    return {"file": str(item.image), "reason": message}


@dataclass
class Payload:
    image: bytes
    document_bytes: bytes | None  # None: the masks are to come from SAM
    document: dict | None
    source: Path | TarMember | None = None  # the annotation file read


def generated_path(cfg: RunnerConfig, item: Item) -> Path:
    """Where SAM's masks of an image without annotations go: `<out_dir>/<key>.json` (SA-1B)."""
    return cfg.out_dir / f"{item.key}.json"


def load_payload(item: Item, cfg: RunnerConfig) -> Payload:
    """The bytes to send and the parsed document (to write back); InputError for a bad file. An
    image without annotations (or every image with `force_sam`) gets SAM's masks: those of an
    earlier run when `<out_dir>/<stem>.json` exists, else none yet (document None)."""
    image = read_input(item.image, "image", MAX_REQUEST_BYTES)
    if item.annotations is None or cfg.force_sam:
        generated = generated_path(cfg, item)
        if cfg.overwrite or not generated.is_file():
            return Payload(image, None, None)
        annotations = generated
    else:
        annotations = item.annotations
    limit = min(document_limit(cfg.in_flight * len(cfg.urls)), MAX_REQUEST_BYTES - len(image))
    text = read_input(annotations, "annotation file", limit)
    return Payload(image, text, parse_document(text, annotations), annotations)


def write_result(cfg: RunnerConfig, prov: dict, item: Item, payload: Payload, labels) -> None:
    document = annotated_document(payload.document, labels, prov)
    image = masks = None
    if cfg.save_img:
        from ssa.images import decode_image
        from ssa.sa1b import decode_annotations

        image = decode_image(payload.image, item.image)
        masks = decode_annotations(payload.document, image.shape[:2], payload.source)
    write_outputs(cfg.out_dir, item.key, document, image, masks)


class Server:
    """One server's client and its health: when it went down, how long to wait next."""

    def __init__(self, url: str, retry_limit: float, owner=None):
        import tritonclient.grpc.aio as grpcclient

        self.url = url
        self.client = grpcclient.InferenceServerClient(url)
        self.retry_limit = retry_limit
        self.down_since: float | None = None
        self.delay = 0.5
        self.given_up = False
        self.has_sam = False  # serves sam_masks (masks for images without annotations)
        self.has_health = False  # serves ssa_health (stub liveness; reloads dead models)
        self.owner = owner  # the EmbeddedServer this runner started, or None
        self.recovering = asyncio.Lock()  # one recovery at a time, however many requests saw the fault

    def up(self) -> None:
        self.down_since, self.delay = None, 0.5

    async def wait_after_failure(self, reason: str) -> bool:
        """Sleep before the next try; False once the server has been down longer than the limit."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            tqdm.write(f"server {self.url} unavailable ({reason}); retrying for up to {self.retry_limit:.0f}s")
        if self.given_up or now - self.down_since > self.retry_limit:
            if not self.given_up:
                tqdm.write(f"server {self.url} unavailable for {now - self.down_since:.0f}s; giving it up")
            self.given_up = True
            return False
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 10.0)
        return True

    async def ready_now(self) -> bool:
        """Ready to serve: `ssa_engine` ready and, where the server has `ssa_health`, every Python
        model's stub process alive (Triton keeps a model "ready" after its stub died)."""
        try:
            if not await self.client.is_model_ready(MODEL, client_timeout=5):
                return False
            if self.has_health:
                await self.client.infer(HEALTH_MODEL, health_inputs(), client_timeout=30)
            return True
        except Exception:
            return False

    async def recover(self, models: list[str], reason: str) -> bool:
        """Bring the server back after a model process died (or the server itself, when this runner
        owns it); False when it stayed unhealthy past the retry limit (then it is given up). The
        `ssa_health` probe reloads dead models; a server without it is asked to reload them
        (explicit model control); a server this runner owns is restarted when it is gone or cannot
        be healed that way. Retried with backoff."""
        async with self.recovering:
            if await self.ready_now():  # another request's recovery already brought it back
                return True
            what = ", ".join(models) or "the server"
            tqdm.write(f"server {self.url}: {what} cannot serve ({reason.splitlines()[0]}); recovering")
            if self.owner is not None and (not self.owner.alive() or not self.has_health):
                await self._restart_owner()
            elif not self.has_health:
                for model in models:
                    try:  # a plain load of a loaded model does nothing: unload it first
                        await self.client.unload_model(model)
                        await self.client.load_model(model)
                    except Exception as exc:  # not in explicit model control: wait for someone to restart it
                        tqdm.write(f"server {self.url}: cannot reload {model} ({error_text(exc).splitlines()[0]})")
            while not await self.ready_now():
                if self.owner is not None and not self.owner.alive() and await self._restart_owner():
                    continue
                if not await self.wait_after_failure(f"{what} cannot serve"):
                    return False
            self.up()
            tqdm.write(f"server {self.url}: serving again")
            return True

    async def _restart_owner(self) -> bool:
        """Restart the server this runner started; False (reported) when it did not come up."""
        try:
            await asyncio.to_thread(self.owner.restart)
        except Exception as exc:  # ServerError: it did not start; retried with backoff
            tqdm.write(f"server {self.url}: restart failed ({str(exc).splitlines()[0]})")
            return False
        tqdm.write(f"server {self.url}: restarted")
        return True

    async def wait_ready(self) -> None:
        """Wait until the server and `ssa_engine` are ready (it may be starting); ServersUnavailable
        after `retry_limit` seconds."""
        while True:
            try:
                if await self.client.is_server_ready() and await self.client.is_model_ready(MODEL):
                    self.up()
                    return
                reason = f"server or {MODEL} not ready"
            except Exception as exc:  # not listening yet, or refusing
                reason = error_text(exc)
            if not await self.wait_after_failure(reason.splitlines()[0]):
                raise ServersUnavailable(f"server {self.url}: {MODEL} not ready after {self.retry_limit:.0f}s "
                                         f"({reason.splitlines()[0]}); is tritonserver running with the generated "
                                         f"repository, and is --url its gRPC address?")

    async def engine_info(self) -> dict:
        """Check `ssa_engine`'s metadata against what this client sends; its provenance parameters."""
        meta = await self.client.get_model_metadata(MODEL, as_json=True)
        got_in = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
        got_out = {t["name"]: t["datatype"] for t in meta.get("outputs", [])}
        if got_in != EXPECTED_INPUTS or not set(EXPECTED_OUTPUTS.items()) <= set(got_out.items()):
            raise ServerMismatch(f"server {self.url}: {MODEL} takes {got_in} and gives {got_out}; this client "
                                 f"sends {EXPECTED_INPUTS} and reads {EXPECTED_OUTPUTS}. Regenerate the model "
                                 f"repository with this version of ssa-triton.")
        try:
            self.has_sam = bool(await self.client.is_model_ready(SAM_MODEL))
        except Exception:  # not in this repository
            self.has_sam = False
        try:
            self.has_health = bool(await self.client.is_model_ready(HEALTH_MODEL))
        except Exception:  # a repository of an earlier version
            self.has_health = False
        config = (await self.client.get_model_config(MODEL, as_json=True))["config"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        profile = json.loads(params["profile_json"]) if params.get("profile_json") else {"profile": params.get("profile")}
        return {"profile": profile, "package_version": params.get("package_version")}


class Run:
    """The shared state of one run: the queue of work, counts, failures."""

    def __init__(self, cfg: RunnerConfig, sources: Iterator[Listing]):
        self.cfg = cfg
        self.sources = sources
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(4, 2 * cfg.in_flight * len(cfg.urls)))
        self.returned: deque[Item] = deque()  # items given back by a server that was given up
        self.in_progress = 0  # items taken by a worker and not finished, failed or given back
        self.summary = RunSummary()
        self.listed = False
        self.listing_stopped: ListingStopped | None = None
        self.last_source = ""  # the source listed last (named when listing fails after it)
        self.stopped = False
        self.draining = False  # a signal came: no new image
        self.forced = False  # a second signal, or the grace ran out: requests in flight abandoned
        self.signal_name = ""
        self.done_at_signal = 0  # images done when the signal came
        self.abandoned = 0  # requests in flight abandoned (second signal, or the grace over)
        self.requests: set[asyncio.Task] = set()  # the infer calls in flight
        self.waits: set[asyncio.Task] = set()  # waits for a server to come back (backoff, recovery)
        self.workers = 0
        self.failures_written = 0.0
        self.bar = tqdm(total=0, desc="images", unit="img", dynamic_ncols=True, disable=not cfg.progress)
        self.start = time.perf_counter()
        self.prov: dict = {}
        self.params = params_bytes(cfg.params, cfg.vocabulary)  # encoded once (a vocabulary can be large)
        self.sam_params = json.dumps(cfg.sam_params.to_dict()).encode()

    def fail(self, entry: dict[str, str]) -> None:
        self.summary.failures.append(entry)
        tqdm.write(f"failed: {entry['file']}: {entry['reason']}")
        self.bar.update(1)
        self.save_failures()

    def save_failures(self, final: bool = False) -> None:
        """Rewrite the failures file (atomically) at most every FAILURES_EVERY seconds, so that
        `ssa status` sees a running task's failures; `final`: now, whatever the time."""
        now = time.monotonic()
        if final or now - self.failures_written >= FAILURES_EVERY:
            name = failures_path_name(self.cfg.shard)
            try:
                write_failures(self.cfg.out_dir, self.summary.failures, name)
            except OSError as exc:
                raise OutputUnwritable(self.cfg.out_dir / name, exc) from exc
            self.failures_written = now

    def on_signal(self, signum: int) -> None:
        """First SIGTERM / SIGINT: drain (no new image; the requests in flight get `grace` seconds).
        A second one: stop at once."""
        name = signal.Signals(signum).name
        if self.draining:
            tqdm.write(f"{name} again: abandoning {len(self.requests)} requests in flight")
            self.force_stop()
            return
        self.draining, self.signal_name, self.done_at_signal = True, name, self.summary.done
        tqdm.write(f"{name}: draining: no new image; {len(self.requests)} requests in flight get up to "
                   f"{self.cfg.grace:.0f}s (a second {name} stops at once)")
        for task in list(self.waits):  # nothing to wait for a server for any more
            task.cancel()
        while not self.queue.empty():  # queued, not started: left for the next run
            self.queue.get_nowait()
        for _ in range(self.workers):
            self.queue.put_nowait(None)
        asyncio.get_running_loop().call_later(self.cfg.grace, self.grace_over)

    def grace_over(self) -> None:
        if self.requests:
            tqdm.write(f"grace of {self.cfg.grace:.0f}s over: abandoning {len(self.requests)} requests in flight")
        self.force_stop()

    def force_stop(self) -> None:
        self.forced = True
        self.abandoned += len(self.requests)
        for task in list(self.requests | self.waits):
            task.cancel()

    async def waited(self, coroutine) -> object:
        """The result of waiting for a server (`recover`, `wait_after_failure`); INTERRUPTED when a
        signal came meanwhile (the wait is cancelled at once: a draining run waits for no server)."""
        if self.draining:
            coroutine.close()
            return INTERRUPTED
        task = asyncio.create_task(coroutine)
        self.waits.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self.draining:
                return INTERRUPTED
            raise
        finally:
            self.waits.discard(task)

    def done(self, masks: int) -> None:
        self.summary.done += 1
        self.summary.masks += masks
        self.bar.update(1)
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"{self.summary.done / elapsed:.3f} img/s, {self.summary.masks / elapsed:.1f} masks/s")

    def select(self, listing: Listing) -> list[Item]:
        """The items of `listing` this run is to send: this task's (`--shard`), not done yet
        (unless `overwrite`); the listing's problems and duplicate output paths recorded as
        failures, stale temporary files of its output folder removed."""
        shard = self.cfg.shard
        if listing.error is not None:
            self.summary.failures.append({"file": listing.source, "reason": listing.error.problem})
            tqdm.write(f"failed: {listing.error}")
        for problem in listing.unusable:
            key = "/".join(p for p in (listing.folder, PurePosixPath(str(problem.source)).stem) if p)
            if not listing.whole and key not in shard:
                continue
            self.summary.failures.append({"file": str(problem.source), "reason": problem.problem})
            tqdm.write(f"failed: {problem}")
        if listing.folder:
            remove_stale_parts(self.cfg.out_dir / listing.folder)
        todo: list[Item] = []
        seen_in_source: dict[str, str] = {}
        for item in listing.items:
            if item.shard_key not in shard:
                continue
            first = seen_in_source.get(item.key)
            if first is not None:
                why = "it is listed twice" if first == str(item.image) else f"so has {first}, the same name with another suffix"
                self.summary.failures.append({"file": str(item.image), "reason": f"another image of "
                                              f"{listing.source} has the output path {item.key!r} ({why})"})
                continue
            seen_in_source[item.key] = str(item.image)
            problem = output_name_problem(self.cfg.out_dir, item.key)
            if problem is not None:
                self.summary.failures.append({"file": str(item.image), "reason": problem})
                name = str(item.image)
                tqdm.write(f"failed: {name if len(name) <= 160 else name[:100] + '...' + name[-40:]}: {problem}")
                continue
            if not self.cfg.overwrite and is_done(self.cfg.out_dir, item.key):
                self.summary.skipped += 1
                continue
            todo.append(item)
        return todo

    async def produce(self, workers: int) -> None:
        """List the sources one by one and queue the items of this shard that are not done yet.
        Listing that fails (a bug, or an input that vanishes mid-run in a way the listing does not
        expect) ends the run once the images already queued are done, never leaves it waiting."""
        try:
            await self._produce(workers)
        except Exception as exc:  # noqa: BLE001 - reported as the run's stop, with the reason
            after = f" after {self.last_source}" if self.last_source else ""
            self.listing_stopped = ListingStopped(f"listing the inputs stopped{after} ({type(exc).__name__}: "
                                                  f"{exc}); the images listed before were done; rerun to resume")
            self.summary.failures.append({"file": self.last_source or "inputs", "reason": str(self.listing_stopped)})
            for _ in range(workers):
                await self.queue.put(None)

    async def _produce(self, workers: int) -> None:
        while True:
            listing = await asyncio.to_thread(next, self.sources, None)
            if listing is None or self.stopped or self.draining:
                break
            self.last_source = listing.source
            todo = await asyncio.to_thread(self.select, listing)
            self.save_failures()  # a listing's problems, on disk for `ssa status`
            self.bar.total += len(todo)
            self.bar.refresh()
            for item in todo:
                if self.stopped or self.draining:
                    return
                await self.queue.put(item)
        if self.draining:
            return
        self.listed = True
        for _ in range(workers):
            await self.queue.put(None)

    async def next_item(self) -> Item | None:
        """The next item to send (work given back by a server that was given up first), or None at
        the end. The end waits for items still held by other servers: one of them may be given up
        and its item handed back."""
        while True:
            if self.draining:
                return None
            if self.returned:
                item = self.returned.popleft()
            else:
                item = await self.queue.get()
                if item is None and self.draining:
                    return None
                if item is None and (self.returned or self.in_progress):
                    await self.queue.put(None)
                    await asyncio.sleep(0.2)
                    continue
            if item is not None:
                self.in_progress += 1
            return item

    async def work(self, server: Server) -> None:
        """One request in flight on `server`, item after item, until the end or the server is given up."""
        while not self.stopped and not server.given_up:
            item = await self.next_item()
            if item is None:
                return
            try:
                kept = await self.process(server, item)
            finally:
                self.in_progress -= 1
            if not kept:
                return

    async def request(self, server: Server, item: Item, model: str, inputs) -> object:
        """`model`'s result for `item`, retried while the server is down or restarting; FAILED when
        the item failed (recorded), GIVEN_UP when the server was given up (the item handed back),
        INTERRUPTED when the run stopped on a signal before the result came (the item is left)."""
        strikes = deaths = 0
        while True:
            if self.forced:
                return INTERRUPTED
            task = asyncio.create_task(server.client.infer(model, inputs, client_timeout=self.cfg.request_timeout))
            self.requests.add(task)
            try:
                result = await task
                server.up()
                return result
            except asyncio.CancelledError:
                if self.forced:  # abandoned after a second signal or the grace (the item is left)
                    return INTERRUPTED
                raise
            except Exception as exc:
                failure = exc
            finally:
                self.requests.discard(task)
            message = error_text(failure)
            dead = dead_models(failure)
            if self.draining and (dead is not None or is_transient(failure)):
                return INTERRUPTED  # the server is stopping too (the whole job got the signal): left for the rerun
            if dead is None and server.owner is not None and not server.owner.alive():
                dead = []  # the server this runner started is gone: restart it
            if dead is not None:
                deaths += 1
                if deaths > MAX_DEATHS:
                    self.fail({"file": str(item.image), "reason": f"a model process of the server died "
                               f"{deaths} times on this image (it may need more memory than the server "
                               f"has): {message.splitlines()[0]}"})
                    return FAILED
                recovered = await self.waited(server.recover(dead, message))
                if recovered is INTERRUPTED:
                    return INTERRUPTED
                if not recovered:
                    self.returned.append(item)
                    return GIVEN_UP
                continue
            if not is_transient(failure):
                self.fail(failure_of(item, message))
                return FAILED
            # a server that is up yet fails on this image again and again (e.g. a model
            # process killed by it) must not stop the run: the image is recorded as failed
            if await server.ready_now():
                strikes += 1
                if strikes >= MAX_STRIKES:
                    self.fail({"file": str(item.image), "reason": f"the server failed {strikes} times on "
                               f"this image while staying up: {message.splitlines()[0]}"})
                    return FAILED
            waited = await self.waited(server.wait_after_failure(message.splitlines()[0]))
            if waited is INTERRUPTED:
                return INTERRUPTED
            if not waited:
                self.returned.append(item)
                return GIVEN_UP

    async def sam_masks(self, server: Server, item: Item, payload: Payload) -> object:
        """Ask `sam_masks` for the image's masks and write them as `<out_dir>/<stem>.json`."""
        if not server.has_sam:
            self.fail({"file": str(item.image), "reason": "no annotation file (<stem>.json) beside the image, and "
                       f"server {server.url} has no sam_masks model to make masks (export a profile that "
                       "includes SAM and regenerate the repository)"})
            return FAILED
        result = await self.request(server, item, SAM_MODEL, sam_inputs(payload.image, self.sam_params))
        if result is FAILED or result is GIVEN_UP or result is INTERRUPTED:
            return result
        document = json.loads(text_of(result.as_numpy("annotations").reshape(-1)[0]))
        document["image"].update(file_name=PurePosixPath(str(item.image)).name, image_id=image_id(item.stem))
        text = json.dumps(document).encode("utf-8")
        try:
            await asyncio.to_thread(write_bytes_atomic, generated_path(self.cfg, item), text)
        except OSError as exc:
            raise OutputUnwritable(generated_path(self.cfg, item), exc) from exc
        payload.document, payload.document_bytes = document, text
        payload.source = generated_path(self.cfg, item)
        return result

    async def process(self, server: Server, item: Item) -> bool:
        """Send one item and write its outputs, or record its failure; False when `server` was given
        up (the item is handed back for another server) or the run was interrupted (the item is left)."""
        cfg = self.cfg
        try:
            payload = await asyncio.to_thread(load_payload, item, cfg)
        except InputError as exc:
            self.fail({"file": str(exc.source or item.image), "reason": exc.problem})
            return True
        if payload.document is None:
            made = await self.sam_masks(server, item, payload)
            if made is FAILED or made is GIVEN_UP or made is INTERRUPTED:
                return made is FAILED
        inputs = build_inputs(payload.image, payload.document_bytes, encoded_params=self.params)
        result = await self.request(server, item, MODEL, inputs)
        if result is FAILED or result is GIVEN_UP or result is INTERRUPTED:
            return result is FAILED
        try:
            labels = parse_result(result)
            prov = {**self.prov, "runtime": runtime_of(result)}
            await asyncio.to_thread(write_result, cfg, prov, item, payload, labels)
        except InputError as exc:
            self.fail({"file": str(exc.source or item.image), "reason": exc.problem})
            return True
        except ValueError as exc:
            self.fail({"file": str(item.image), "reason": str(exc)})
            return True
        except OSError as exc:
            raise OutputUnwritable(output_paths(cfg.out_dir, item.key)[0], exc) from exc
        self.done(len(labels))
        return True

    async def run(self) -> RunSummary:
        cfg = self.cfg
        servers = [Server(url, cfg.retry_limit, cfg.owned.get(url)) for url in cfg.urls]
        loop = asyncio.get_running_loop()
        handled = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self.on_signal, signum)
                handled.append(signum)
            except (RuntimeError, ValueError):  # not the main thread: the caller handles signals
                pass
        try:
            check = asyncio.create_task(self._check(servers))
            self.waits.add(check)  # a signal while waiting for the servers to come up stops at once
            try:
                infos = await check
            except asyncio.CancelledError:
                if self.draining:
                    raise Interrupted(f"{self.signal_name} before the servers were ready; rerun to resume") from None
                raise
            finally:
                self.waits.discard(check)
            self.prov = provenance(ENGINE_NAME, infos[0]["profile"], cfg.params, cfg.vocabulary)
            self.workers = len(servers) * cfg.in_flight
            tasks = [asyncio.create_task(self.work(s)) for s in servers for _ in range(cfg.in_flight)]
            producer = asyncio.create_task(self.produce(len(tasks)))
            await asyncio.gather(*tasks)
            self.stopped = True
            producer.cancel()
            if self.listing_stopped is not None and not self.draining:
                raise self.listing_stopped
            if self.draining:
                finished = self.summary.done - self.done_at_signal
                raise Interrupted(f"stopped by {self.signal_name}: {finished} requests in flight finished and "
                                  f"written, {self.abandoned} abandoned; rerun to resume")
            if not self.listed or self.returned:
                down = ", ".join(s.url for s in servers if s.given_up)
                raise ServersUnavailable(f"stopped: no server reachable ({down} down for more than "
                                         f"{cfg.retry_limit:.0f}s); rerun to resume")
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            self.bar.close()
            for s in servers:
                await s.client.close()
        return self.summary

    async def _check(self, servers: list[Server]) -> list[dict]:
        await asyncio.gather(*(s.wait_ready() for s in servers))
        infos = [await s.engine_info() for s in servers]
        if any(i["profile"] != infos[0]["profile"] for i in infos):
            raise ServerMismatch("the servers serve different models: " +
                                 "; ".join(f"{s.url}: {i['profile'].get('profile')}" for s, i in zip(servers, infos)))
        return infos


def failures_path_name(shard: Shard) -> str:
    return "failures.json" if shard.count == 1 else f"failures_{shard.index}of{shard.count}.json"


def annotate_dataset(cfg: RunnerConfig, sources: Iterator[Listing]) -> tuple[RunSummary, Exception | None]:
    """Run the whole dataset; (summary, the ServersUnavailable, ServerMismatch or Interrupted that
    stopped it, or None). Failures go to the failures file. ValueError for an output folder in the
    flat layout of an earlier version (`ssa.layout.check_layout`)."""
    check_layout(cfg.out_dir)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(cfg.out_dir)  # temporary files of a runner that was killed (SIGKILL)
    run = Run(cfg, sources)
    stop = None
    try:
        asyncio.run(run.run())
    except (ServersUnavailable, ServerMismatch, Interrupted, OutputUnwritable, ListingStopped) as exc:
        stop = exc
    summary = run.summary
    summary.seconds = time.perf_counter() - run.start
    try:
        path = write_failures(cfg.out_dir, summary.failures, failures_path_name(cfg.shard))
    except OSError as exc:
        path, stop = None, stop or OutputUnwritable(cfg.out_dir / failures_path_name(cfg.shard), exc)
    print(summary.line() + (f"; failures listed in {path}" if path else ""), file=sys.stderr)
    return summary, stop
