"""`python -m export`: export a profile's models to ONNX, checking each against PyTorch."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from export.core import ExportCheckError, export_profile, quiet
from export.specs import SPECS


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export every model of a profile to ONNX (OneFormer COCO/ADE20K semantic scores, CLIP "
                    "image/text encoders, CLIPSeg backbone/text/decoder, BLIP vision + text prefill/step with "
                    "key/value cache) and check each file against PyTorch on fresh inputs. Fails loudly "
                    "when a file is outside its tolerance.")
    parser.add_argument("--profile", default="tiny", help="profile name (default %(default)s)")
    parser.add_argument("--models_dir", type=Path, default=Path("artifacts/models"),
                        help="folder of profile folders (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/onnx/<profile>)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SPECS)}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the tracer's warnings and the weight-loading bars (default: one line per "
                             "model: name, size, largest difference against PyTorch <= its tolerance, seconds)")
    args = parser.parse_args(argv)
    profile_dir = args.models_dir / args.profile
    out = args.out or Path("artifacts/onnx") / args.profile
    try:
        with contextlib.nullcontext() if args.verbose else quiet():
            if not (profile_dir / "profile.json").is_file():
                from ssa.profiles import build_profile

                build_profile(args.profile, profile_dir)
            export_profile(profile_dir, out, [n for n in args.only.split(",") if n] or None)
    except ExportCheckError as exc:
        print(f"export check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"ONNX files and manifest.json written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
