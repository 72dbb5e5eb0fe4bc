"""Third-party noise kept out of the worker's log: transformers' notice that its image processors
fall back to PIL without torchvision (at import, three paragraphs), diffusers' paragraph on the
safety checker pipelines are loaded without (at every load) and its checker's warning at each
flagged batch, its notices at each call of an SDXL pipeline (or the x4 upscaler) on CUDA when it
casts the VAE to fp32 and back (``upcast_vae``'s deprecation, and ``to()``'s "modules that should be
kept in float32"), and both libraries' progress bars, which a log file records as screens of
carriage returns. Their warnings and errors otherwise stay."""

from __future__ import annotations

import logging
import warnings
from typing import Any

#: Parts of the messages dropped: each a notice about a choice made on purpose here.
NOISE = (
    "requires torchvision (not installed)",  # the PIL image processors serve (no torchvision here)
    # Pipelines are loaded without their safety checker: it runs after them (worker.safety).
    "You have disabled the safety checker",
    "Potential NSFW content was detected",  # the worker counts and records flagged images itself
    # diffusers' own fp32 upcast of a force_upcast VAE (and our cast back after a failed decode).
    "Casting directly with `to()` can lead to inconsistent results",
)
#: The start of the deprecation warning (a ``FutureWarning``) diffusers' SDXL pipelines raise from
#: inside their own call when they upcast the VAE.
UPCAST_WARNING = "`upcast_vae` is deprecated"


class DropNoise(logging.Filter):
    """Drops the records whose message holds one of ``NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in NOISE)


def quiet_third_party() -> None:
    """Drop ``NOISE`` and turn off progress bars; call before diffusers is first imported (its import
    makes transformers' notice)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", message=UPCAST_WARNING, category=FutureWarning)

    for library in (transformers_logging, diffusers_logging):
        library.disable_progress_bar()
        # Each library logs through its root logger's own handler (its records do not propagate):
        # a filter there sees every module's records.
        for handler in library.get_logger().handlers:
            if not any(isinstance(item, DropNoise) for item in handler.filters):
                handler.addFilter(DropNoise())


def serving(pipe: Any) -> Any:
    """Return ``pipe`` set up to serve: no progress bar, and none of diffusers' own watermark (its
    SDXL pipelines mark every image of 256 pixels and wider whenever invisible-watermark is
    installed; here the deployment decides, ``LATENTQ_WATERMARK``, and marks what it stores)."""
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "watermark", None) is not None:
        pipe.watermark = None
    return pipe
