"""The invisible watermark of a deployment's images (``LATENTQ_WATERMARK``): invisible-watermark's
DWT-DCT method, carrying the 48-bit message of Stability AI's SDXL reference code, so tools that
look for Stable Diffusion's mark find it in ours.

The mark goes into each image as it is stored (the job's thread: never the sampling thread), after
the safety check. Images under 256x256 pixels of area carry none: the method needs that many.
"""

from __future__ import annotations

import numpy as np
from imwatermark import WatermarkDecoder, WatermarkEncoder
from PIL import Image as PILImage
from PIL.Image import Image

#: The message SDXL's reference code marks its images with (48 bits, most significant first).
MESSAGE = 0b101100111110110010010000011110111011000110011110
#: The message's bits, as the encoder and decoder take them.
MESSAGE_BITS = [int(bit) for bit in f"{MESSAGE:048b}"]
#: Fewest pixels an image must have to be marked (the method's own limit).
MIN_PIXELS = 256 * 256
#: Bits read back that must match for an image to count as marked. The method is not exact: on
#: smooth gradients a few bits read wrong (43 of 48 measured); an unmarked image matches about half,
#: and 40 or more by chance once in about 600,000 images.
MATCHING_BITS = 40
#: invisible-watermark's DWT-DCT method (also SDXL's).
METHOD = "dwtDct"


class Watermark:
    """Marks images with ``MESSAGE_BITS``."""

    def __init__(self) -> None:
        self.encoder = WatermarkEncoder()
        self.encoder.set_watermark("bits", MESSAGE_BITS)

    def mark(self, image: Image) -> Image:
        """Return ``image`` with the mark in it (unchanged if it is too small to carry one)."""
        if image.width * image.height < MIN_PIXELS:
            return image
        # The encoder takes 8-bit BGR, as OpenCV reads images; marks made in 8 bits survive the
        # rounding of the stored file (in floats, a measured quarter of the bits did not).
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        marked = self.encoder.encode(bgr, METHOD)
        return PILImage.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))


def read_mark(image: Image) -> list[int]:
    """Return the 48 bits a decoder reads from ``image`` (``MESSAGE_BITS``, or nearly, when it is marked)."""
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return [int(bit) for bit in WatermarkDecoder("bits", len(MESSAGE_BITS)).decode(bgr, METHOD)]


def carries_mark(image: Image) -> bool:
    """Whether ``image`` carries the mark: at least ``MATCHING_BITS`` of the bits read are the message's."""
    return sum(a == b for a, b in zip(read_mark(image), MESSAGE_BITS, strict=True)) >= MATCHING_BITS
