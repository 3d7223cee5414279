from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssa.resize import resize_bilinear, resized_argmax


@pytest.mark.parametrize(("src", "dst"), [((7, 9), (20, 31)), ((64, 64), (13, 17)), ((5, 5), (5, 5)),
                                          ((1, 1), (3, 4)), ((32, 48), (512, 512))])
def test_bilinear_matches_torch(src, dst):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst), ref, atol=2e-6, rtol=1e-5)


def test_resized_argmax_matches_full_resize_in_chunks(monkeypatch):
    import ssa.resize

    monkeypatch.setattr(ssa.resize, "CHUNK_BYTES", 4096)  # force many chunks
    rng = np.random.default_rng(1)
    scores = rng.random((6, 11, 13)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(scores)[None], size=(50, 70), mode="bilinear", align_corners=False)
    expected = ref[0].argmax(0).numpy()
    got = resized_argmax(scores, (50, 70))
    assert got.shape == (50, 70)
    assert (got == expected).mean() > 0.999  # ties between float roundings only
