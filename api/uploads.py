"""Uploaded images, checked at the door: the worker only ever sees images the API decoded itself.

Each image is checked in this order, each failure a named 400 that says which field:
its byte size (``invalid_file_size``), its format from its own header, not the client's word
(``invalid_mime_type``: PNG, JPEG, WebP), its pixel count before any pixel is decoded (the
decompression-bomb guard, tightened to the largest size the model accepts; Pillow's own bomb
warning is an error here too), then a full decode (``invalid_image`` for truncated or malformed
data). Accepted images are re-encoded as PNG and stored in S3 next to the job's outputs.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from latentq.errors import LatentqError

#: Largest upload, bytes (after base64 decoding).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: Formats accepted, as Pillow names them.
FORMATS = ("PNG", "JPEG", "WEBP")


def decode_base64(text: str, field: str) -> bytes:
    """Return the bytes of base64 ``text`` (a ``data:`` URL prefix is allowed)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise LatentqError.for_field(
            "invalid_file_size", field, f"{field}: larger than {MAX_IMAGE_BYTES:,} bytes"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LatentqError.for_field("invalid_image", field, f"{field}: not valid base64") from None


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a fully loaded image, or raise the named error for ``field``."""
    if len(data) > MAX_IMAGE_BYTES:
        raise LatentqError.for_field(
            "invalid_file_size",
            field,
            f"{field}: {len(data):,} bytes; at most {MAX_IMAGE_BYTES:,} are accepted",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
        except Image.UnidentifiedImageError:
            raise LatentqError.for_field(
                "invalid_mime_type", field, f"{field}: not a PNG, JPEG or WebP image"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError) as error:
            raise LatentqError.for_field("invalid_image", field, f"{field}: unreadable ({error})") from None
        width, height = image.size
        if width * height > max_pixels:
            pixels = f"{width}x{height} is {width * height:,} pixels"
            raise LatentqError.for_field(
                "invalid_image_dimensions", field, f"{field}: {pixels}; at most {max_pixels:,} are accepted"
            )
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError) as error:
            raise LatentqError.for_field(
                "invalid_image", field, f"{field}: truncated or corrupt ({error})"
            ) from None
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Return ``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
