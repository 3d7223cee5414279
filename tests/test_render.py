"""The `--save_img` picture: translucent fills (the photo shows through), outlines, labels inside
their masks and on the canvas, a legend of the classes present, large photos scaled for viewing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssa.images import load_image
from ssa.render import MAX_SIDE, name_colour, render
from ssa.sa1b import decode_annotations, read_document

NAMES = ["person", "sky", "building", "tree", "road"]


def example(example_dir, stem="sa_1"):
    image = load_image(example_dir / f"{stem}.jpg")
    masks = decode_annotations(read_document(example_dir / f"{stem}.json"), image.shape[:2]).masks()
    return image, masks, [NAMES[i % len(NAMES)] for i in range(len(masks))]


def test_fills_are_translucent(example_dir):
    image, masks, names = example(example_dir)
    picture = render(image, masks, names)
    drawn = np.asarray(picture.image)[:, : image.shape[1]].astype(int)
    label_area = np.zeros(image.shape[:2], bool)
    for _, (x0, y0, x1, y1) in picture.labels:
        label_area[y0:y1, x0:x1] = True
    only = masks[0] & ~masks[1:].any(0) & ~label_area  # pixels of mask 0 alone, no label on them
    colour = np.array(name_colour(names[0]))
    # away from the outline (2 pixels in), the drawn pixel is half photo, half colour (to rounding):
    # it differs from both
    inner = only.copy()
    for _ in range(2):
        inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
    ys, xs = np.nonzero(inner)
    assert len(ys) > 100
    photo = image[ys, xs].astype(int)
    assert np.abs(drawn[ys, xs] - (photo + colour) / 2).max() <= 1
    distinct = np.abs(photo - colour).sum(1) > 6  # where the photo is not already the mask's colour
    assert distinct.mean() > 0.9
    assert (np.abs(drawn[ys, xs] - photo).sum(1)[distinct] > 0).all()
    assert (np.abs(drawn[ys, xs] - colour).sum(1)[distinct] > 0).all()
    # the outline is drawn in the class colour
    edge = only & ~inner
    assert (np.abs(drawn[edge] - colour).sum(1) == 0).mean() > 0.3
    outside = ~masks.any(0)
    assert (drawn[outside] == image[outside]).all()  # unmasked pixels are the photo


def test_labels_lie_inside_their_masks_and_the_canvas(example_dir):
    image, masks, names = example(example_dir)
    picture = render(image, masks, names)
    width, height = picture.photo_size
    assert picture.labels
    for name, (x0, y0, x1, y1) in picture.labels:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (name, (x0, y0, x1, y1))
        owners = [i for i, n in enumerate(names) if n == name and masks[i][y0:y1, x0:x1].all()]
        assert owners, f"label {name!r} at {(x0, y0, x1, y1)} is not inside a mask of its class"
    boxes = [b for _, b in picture.labels]
    for i, a in enumerate(boxes):  # no label covers another
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert set(picture.legend) == set(names)
    assert picture.image.width > width and picture.image.height == height  # the legend beside the photo


def test_large_photos_are_scaled_for_viewing(example_dir):
    image, masks, names = example(example_dir)
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * 5, image.shape[0] * 4)))
    big_masks = np.stack([np.asarray(Image.fromarray(m).resize(big.shape[1::-1], Image.Resampling.NEAREST))
                          for m in masks])
    picture = render(big, big_masks, names)
    assert max(picture.photo_size) == MAX_SIDE and picture.scale == MAX_SIDE / max(big.shape[:2])
    assert picture.image.height == picture.photo_size[1]
    for _, (x0, y0, x1, y1) in picture.labels:
        assert 0 <= x0 < x1 <= picture.photo_size[0] and 0 <= y0 < y1 <= picture.photo_size[1]


def test_no_masks_is_the_photo(example_dir):
    image, masks, _ = example(example_dir)
    picture = render(image, masks[:0], [])
    assert (np.asarray(picture.image) == image).all() and picture.legend == []
