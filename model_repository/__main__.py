"""`python -m model_repository`: generate a repository, or serve one with the embedded tritonserver."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from model_repository.generate import TARGETS, generate_repository
from model_repository.server import EmbeddedServer, ServerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_repository",
                                     description="Generate the Triton model repository of a profile, or serve it.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write artifacts/repository/<profile>-<target> from the ONNX export")
    g.add_argument("--profile", default="tiny")
    g.add_argument("--target", default="cpu", choices=TARGETS, help="cpu: Python+ONNX Runtime; gpu: native ORT/TensorRT")
    g.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    g.add_argument("--onnx_dir", type=Path, default=None, help="default artifacts/onnx/<profile>")
    g.add_argument("--out", type=Path, default=None, help="default artifacts/repository/<profile>-<target>")
    g.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per model (cpu target)")
    g.add_argument("--engine_instances", type=int, default=0,
                   help="ssa_engine instances (default 0: 1 on the cpu target, 2 on the gpu target, so one "
                        "image's host work overlaps another's models)")
    g.add_argument("--no_sam", action="store_true",
                   help="leave SAM's models out (a labelling-only server; images then need their JSON)")
    g.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                   help="ssa_engine runs the image stage's sub-requests together and two images of a batch "
                        "interleaved (auto: on for gpu, off for cpu, where the models already use every core)")
    for key, what in (("max_masks", "masks per image"), ("max_image_pixels", "image pixels"),
                      ("memory_budget_mb", "MiB per image in progress")):
        g.add_argument(f"--{key}", default="auto", metavar="N|auto",
                       help=f"ssa_engine refuses requests over this many {what} (INVALID_ARG, the run goes on); "
                            "auto: derived when the server starts from its memory and the engine's memory bound")
    s = sub.add_parser("serve", help="start the embedded tritonserver on 127.0.0.1 until Ctrl-C")
    s.add_argument("--repository", type=Path, required=True)
    s.add_argument("--grpc_port", type=int, default=8001)
    s.add_argument("--http_port", type=int, default=8000)
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    if args.command == "generate":
        onnx_dir = args.onnx_dir or Path("artifacts/onnx") / args.profile
        out = args.out or Path("artifacts/repository") / f"{args.profile}-{args.target}"
        try:
            generate_repository(onnx_dir, args.models_dir / args.profile, out, args.target, args.threads,
                                args.engine_instances, overlap={"auto": None, "on": True, "off": False}[args.overlap],
                                include_sam=not args.no_sam,
                                limits={k: getattr(args, k) for k in ("max_masks", "max_image_pixels", "memory_budget_mb")})
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"model repository written to {out}")
        return 0
    server = EmbeddedServer(args.repository, args.grpc_port, args.http_port, ready_timeout=args.timeout)
    try:
        server.start()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tritonserver ready: gRPC {server.url}, log {server.log_path}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
