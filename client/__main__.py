"""`python -m client`: annotate a folder through Triton's `ssa_engine` over gRPC."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from client.engine_client import annotate
from ssa.cli import add_params, params_from
from ssa.dataset import folder_items
from ssa.runner import run_in_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Annotate every <stem>.jpg + <stem>.json of --data_dir through a Triton server's ssa_engine, "
                    "writing <stem>_semantic.json (and --save_img PNGs) to --out_dir.")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address of the server (default %(default)s)")
    parser.add_argument("--embedded", type=Path, default=None, metavar="REPOSITORY",
                        help="start the embedded tritonserver with this generated repository for the run")
    parser.add_argument("--save_img", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    add_params(parser)
    args = parser.parse_args(argv)
    import tritonclient.grpc as grpcclient

    from model_repository.server import EmbeddedServer, ServerError

    params = params_from(args)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.embedded:
            try:
                url = stack.enter_context(EmbeddedServer(args.embedded)).url
            except ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            manifest = json.loads((args.embedded / "manifest.json").read_text())
            profile = manifest["export"]["profile"]
        else:
            profile = {}
        client = grpcclient.InferenceServerClient(url)
        items = folder_items(args.data_dir)

        def run(item, _image, _masks):
            return annotate(client, item.image.read_bytes(), item.annotations.read_bytes(), params)

        summary = run_in_process(items, args.out_dir, run, engine=f"triton ssa_engine at {url}", profile=profile,
                                 params=params, save_img=args.save_img, overwrite=args.overwrite)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
