"""`python -m benchmarks.soak`: one embedded tritonserver under sustained load.

N runners (threads, each with its own gRPC client) send the example set's images to `ssa_engine`
over and over for a fixed time, every request checked against the first answer for its image.
Reported: errors (must be 0), wrong answers (must be 0), throughput per window, and the server's
resident memory (tritonserver and every stub) sampled each second, which must stay flat once warm.

Writes result.json, table.md and soak.png (throughput and memory over time) to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from benchmarks.run import mib, process_tree_rss


class Load:
    """The runners' shared record: completions and errors with their times."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.wrong: list[tuple[float, str]] = []
        self.first: dict[str, list] = {}

    def answer(self, stem: str, labels: list, at: float) -> None:
        key = [(lab.class_name, tuple(lab.class_proposals), lab.caption) for lab in labels]
        with self.lock:
            expected = self.first.setdefault(stem, key)
            if key != expected:
                self.wrong.append((at, stem))
            self.done.append(at)


def runner(url: str, work: list[tuple[str, bytes, bytes]], offset: int, load: Load, start: float, stop: float,
           timeout: float) -> None:
    import tritonclient.grpc as grpcclient

    from client.engine_client import EngineRequestError, annotate

    client = grpcclient.InferenceServerClient(url)
    i = offset
    while time.monotonic() < stop:
        stem, image, document = work[i % len(work)]
        i += 1
        try:
            labels = annotate(client, image, document, timeout=timeout)
        except (EngineRequestError, Exception) as exc:  # every failure counts: the target is none
            with load.lock:
                load.errors.append((time.monotonic() - start, f"{stem}: {type(exc).__name__}: {exc}"[:300]))
            continue
        load.answer(stem, labels, time.monotonic() - start)
    client.close()


def sample_memory(pid: int, start: float, stop: float, samples: list[tuple[float, int]]) -> None:
    while time.monotonic() < stop:
        samples.append((time.monotonic() - start, process_tree_rss(pid)))
        time.sleep(1.0)


def windows(times: list[float], seconds: float, width: float) -> list[tuple[float, float]]:
    """(window end, requests per second) for consecutive windows of `width` seconds."""
    out = []
    edge = width
    while edge <= seconds + 1e-9:
        n = sum(edge - width <= t < edge for t in times)
        out.append((edge, n / width))
        edge += width
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    t, rate = zip(*result["throughput"]) if result["throughput"] else ((), ())
    top.plot([x / 60 for x in t], rate, marker="o", ms=3)
    top.set_ylabel("images / s")
    top.set_ylim(bottom=0)
    top.set_title(f"soak: {result['runners']} runners, one embedded tritonserver ({result['profile']} profile), "
                  f"{result['errors']} errors", fontsize=9)
    m_t, m = zip(*result["memory_mib"]) if result["memory_mib"] else ((), ())
    bottom.plot([x / 60 for x in m_t], m)
    bottom.set_ylabel("server RSS (MiB)")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", help="model profile (default %(default)s)")
    parser.add_argument("--runners", type=int, default=8, help="concurrent runners (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to load the server (default %(default)s)")
    parser.add_argument("--window", type=float, default=30.0, help="throughput window in seconds (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds (default %(default)s)")
    parser.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--repository", type=Path, default=None,
                        help="a generated cpu repository (default: artifacts/repository/<profile>-cpu, regenerated)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/soak"), help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    if args.runners < 1 or args.minutes <= 0:
        parser.error("--runners must be >= 1 and --minutes > 0")

    from benchmarks.run import ensure_repository
    from model_repository.server import EmbeddedServer
    from ssa.dataset import folder_items
    from ssa.examples import build_examples

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "done").exists():
        build_examples(data, max_masks=10)
        (data / "done").touch()
    work = [(i.stem, i.image.read_bytes(), i.annotations.read_bytes()) for i in folder_items(data)]
    _, repository = ensure_repository(args.profile, args.models_dir, args.repository)
    seconds = args.minutes * 60
    load, memory = Load(), []
    with EmbeddedServer(repository, log_path=args.out / "tritonserver.log") as server:
        print(f"soak: {args.runners} runners for {args.minutes:g} min against {server.url} "
              f"({len(work)} images, {args.profile} profile) ...", file=sys.stderr)
        start = time.monotonic()
        stop = start + seconds
        threads = [threading.Thread(target=runner, args=(server.url, work, k, load, start, stop, args.timeout))
                   for k in range(args.runners)]
        threads.append(threading.Thread(target=sample_memory, args=(server.pid, start, stop, memory)))
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(30.0, max(1.0, stop - time.monotonic())))
            elapsed = time.monotonic() - start
            if elapsed < seconds + 1:
                print(f"  {elapsed / 60:4.1f} min: {len(load.done)} images, {len(load.errors)} errors, "
                      f"server {mib(memory[-1][1]) if memory else 0:.0f} MiB", file=sys.stderr)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start

    rss = [m for _, m in memory]
    minute = max(1, min(60, len(rss) // 4))
    first, last = statistics.median(rss[minute : 2 * minute]), statistics.median(rss[-minute:])
    result = {
        "profile": args.profile, "runners": args.runners, "seconds": round(elapsed, 1), "images": len(load.done),
        "errors": len(load.errors), "wrong_answers": len(load.wrong), "error_examples": [e for _, e in load.errors[:5]],
        "images_per_second": round(len(load.done) / elapsed, 3),
        "throughput": [(round(t, 1), round(r, 3)) for t, r in windows(load.done, elapsed, args.window)],
        "memory_mib": [(round(t, 1), mib(m)) for t, m in memory],
        "memory_second_minute_mib": mib(first), "memory_last_minute_mib": mib(last),
        "memory_growth_percent": round(100 * (last - first) / first, 2) if first else None,
        "memory_peak_mib": mib(max(rss)) if rss else None,
    }
    rates = [r for _, r in result["throughput"]]
    table = "\n".join([
        "| figure | value |", "|---|---|",
        f"| runners x minutes | {args.runners} x {elapsed / 60:.1f} |",
        f"| images answered | {result['images']} |",
        f"| errors / wrong answers | {result['errors']} / {result['wrong_answers']} |",
        f"| images/s: overall, per {args.window:g}-s window min / median / max | {result['images_per_second']:.3f}; "
        + (f"{min(rates):.3f} / {statistics.median(rates):.3f} / {max(rates):.3f} |" if rates else "- |"),
        f"| server RSS: 2nd minute / last minute median (growth) | {result['memory_second_minute_mib']:.0f} / "
        f"{result['memory_last_minute_mib']:.0f} MiB ({result['memory_growth_percent']:+.1f}%) |",
        f"| server RSS peak | {result['memory_peak_mib']:.0f} MiB |",
    ]) + "\n"
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "table.md").write_text(table)
    plot(result, args.out / "soak.png")
    print(table)
    print(f"written: {args.out / 'result.json'}, {args.out / 'table.md'}, {args.out / 'soak.png'}")
    return 0 if not load.errors and not load.wrong else 1


if __name__ == "__main__":
    sys.exit(main())
