"""The watermark itself: read back from a marked image, absent from an unmarked one, and not made in
images too small to carry it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.watermark import Watermark, carries_mark


def test_a_marked_image_survives_png_and_an_unmarked_one_reads_as_noise():
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:320, 0:384]
    gradient = np.stack([x / 2, y / 2, (x + y) / 4], -1) + rng.normal(0, 4, (320, 384, 3))
    image = Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8))
    assert carries_mark(Watermark().mark(image))
    assert not carries_mark(image)
    small = image.resize((200, 200))
    assert Watermark().mark(small) is small
