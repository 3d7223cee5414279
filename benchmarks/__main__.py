"""`python -m benchmarks`: the Triton engine against the reference (benchmarks/run.py); with
`--device`, both in this process on one torch device (benchmarks/device.py, the GPU benchmark)."""

import sys

if any(a == "--device" or a.startswith("--device=") for a in sys.argv[1:]):
    from benchmarks.device import main
else:
    from benchmarks.run import main

sys.exit(main())
