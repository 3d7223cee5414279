"""Semantic Segment Anything (SSA) annotation engine.

The algorithm of the SSA engine lives here once, with no Triton import: SA-1B document I/O,
RLE masks, crop geometry, close-set voting, candidate sets, noun phrases, CLIP top-k and the
CLIPSeg vote. The reference pipeline, the Triton Python models, the client and the tests all
call this package.
"""

from __future__ import annotations

__version__ = "0.1.0"
