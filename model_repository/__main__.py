"""`python -m model_repository`: generate a repository, or serve one with the embedded tritonserver."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from model_repository.generate import BACKENDS, DEFAULT_PRECISION, TARGETS, generate_repository
from model_repository.server import EmbeddedServer, ServerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_repository",
                                     description="Generate the Triton model repository of a profile, or serve it.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write artifacts/repository/<profile>-<target> from the ONNX export")
    g.add_argument("--profile", default="tiny")
    g.add_argument("--target", default="cpu", choices=TARGETS, help="cpu: Python models on OpenVINO or ONNX Runtime (--backend); gpu: native ORT/TensorRT fp16")
    g.add_argument("--models_dir", type=Path, default=Path("artifacts/models"))
    g.add_argument("--onnx_dir", type=Path, default=None, help="default artifacts/onnx/<profile>")
    g.add_argument("--out", type=Path, default=None, help="default artifacts/repository/<profile>-<target>")
    g.add_argument("--threads", type=int, default=2, help="threads per compute model (cpu target)")
    g.add_argument("--backend", default="openvino", choices=BACKENDS,
                   help="cpu target: openvino (default; Python models on OpenVINO Runtime, bf16 on CPUs with bf16 "
                        "matrix units), onnxruntime (Python models on ONNX Runtime, fp32), openvino_native "
                        "(Triton's own openvino backend, as in NGC CPU images; not in the embedded server)")
    g.add_argument("--precision", default=None, metavar="SPEC",
                   help="cpu target: fp32, bf16 (OpenVINO: bf16 on the CPU's matrix units, the text encoders "
                        "and CLIPSeg's decoder fp32), or a default then per-graph exceptions as written, e.g. "
                        f"'bf16,oneformer_coco=fp32' (default: {DEFAULT_PRECISION}). fp32 gives labels identical "
                        "to the reference; bf16 on a CPU without bf16 units runs fp32 and says so. What ran is "
                        "recorded in every output's provenance")
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
                                include_sam=not args.no_sam, backend=args.backend, precision=args.precision,
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
