from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ssa.errors import InputError
from ssa.images import decode_image, load_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_is_kept_as_rgb():
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[..., 0] = 200  # red, so a BGR read would put 200 in the last channel
    out = decode_image(encode(Image.fromarray(arr)))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize(
    ("img", "expected_pixel"),
    [
        (Image.fromarray(np.full((3, 4), 77, np.uint8), mode="L"), [77, 77, 77]),
        (Image.fromarray(np.full((3, 4), 65535, np.uint16)), [255, 255, 255]),
        (Image.fromarray(np.full((3, 4, 4), [10, 20, 30, 255], np.uint8), mode="RGBA"), [10, 20, 30]),
        (Image.fromarray(np.full((3, 4, 4), [10, 20, 30, 0], np.uint8), mode="RGBA"), [255, 255, 255]),
        (Image.fromarray(np.full((3, 4), 77, np.uint8), mode="L").convert("P"), [77, 77, 77]),
    ],
    ids=["gray", "gray16", "rgba-opaque", "rgba-transparent", "palette"],
)
def test_modes_become_rgb(img, expected_pixel):
    out = decode_image(encode(img))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert out[1, 1].tolist() == expected_pixel


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 6, 3), np.uint8)  # stored 6 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(Image.fromarray(arr), "JPEG", exif=exif))
    assert out.shape == (6, 2, 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encode(Image.new("RGB", (8, 8)))[:40]],
                         ids=["empty", "text", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, data):
    path = tmp_path / "broken.jpg"
    path.write_bytes(data)
    with pytest.raises(InputError, match="broken.jpg"):
        load_image(path)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.png: cannot read image"):
        load_image(tmp_path / "missing.png")


def test_an_input_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    from ssa.dataset import TarMember
    from ssa.errors import read_input

    path = tmp_path / "huge.jpg"
    path.write_bytes(b"\xff\xd8" + bytes(3 << 20))
    for source in (path, TarMember(path, "huge.jpg", 0, path.stat().st_size)):
        with pytest.raises(InputError, match=r"huge.jpg: too large: image of 3 MiB is over the 2 MiB this client takes"):
            read_input(source, "image", 2 << 20)
    assert len(read_input(path, "image", 4 << 20)) == path.stat().st_size
