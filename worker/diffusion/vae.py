"""The VAE's state across calls: its dtype kept after a failed decode, and its tiling.

diffusers' SDXL pipelines (and the x4 upscaler's) cast an fp16 VAE whose config says
``force_upcast`` to fp32 before decoding, and back to fp16 only after the decode returns. A decode
that raises (out of memory, typically) leaves it fp32, and every later call then feeds fp16
latents to an fp32 VAE and fails. ``keeps_vae_dtype`` puts it back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def vae_dtype_kept(vae: Any) -> Iterator[None]:
    """Give ``vae`` back the dtype it has now when the block ends, whether it returned or raised."""
    dtype = vae.dtype
    try:
        yield
    finally:
        if vae.dtype != dtype:
            vae.to(dtype=dtype)


def keeps_vae_dtype(method: F) -> F:
    """Decorate a pipeline wrapper's method so its ``self.pipe.vae`` has the same dtype after the
    call as before (``vae_dtype_kept``)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with vae_dtype_kept(self.pipe.vae):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def set_tiling(vae: Any, tiled: bool) -> None:
    """Make ``vae`` decode in tiles (its config's ``sample_size`` square, overlapping by a quarter and
    blended) or whole."""
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def tile_pixels(vae: Any) -> int:
    """Return the pixels of one of ``vae``'s decode tiles."""
    side = int(getattr(vae, "tile_sample_min_size", 0) or vae.config.sample_size)
    return side * side
