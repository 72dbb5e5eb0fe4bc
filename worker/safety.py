"""What a model's safety mode does to the images of a pipeline call: each is checked after
decoding, outside the pipeline call (an unflagged image is exactly the pipeline's), by one
checker call over every image of the call; ``flag`` marks the flagged ones, ``filter`` also
replaces them by black images of the same size (as diffusers' own safety checker does).

The checker itself is the diffusion layer's (``worker.diffusion.safety.SafetyChecker``); the worker's
start-up hands each checked model's pipeline a ``SafetyGate`` (its ``safety`` attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from PIL import Image as PILImage
from PIL.Image import Image


class ImageChecker(Protocol):
    """What a safety gate needs of a checker."""

    def flags(self, images: list[Image]) -> list[bool]:
        """Return, per image, whether it is flagged."""
        ...


@dataclass(frozen=True)
class SafetyGate:
    """A checked model's safety mode and its checker."""

    mode: Literal["flag", "filter"]
    checker: ImageChecker

    @property
    def filters(self) -> bool:
        """Whether flagged images are replaced (and so must not leak through previews)."""
        return self.mode == "filter"

    def review(self, images: list[Image]) -> tuple[list[Image], list[bool]]:
        """Return ``images`` (the flagged ones blacked out if the mode filters) and their flags."""
        flags = self.checker.flags(images) if images else []
        if self.filters:
            images = [
                blank(image) if flagged else image for image, flagged in zip(images, flags, strict=True)
            ]
        return images, flags


def blank(image: Image) -> Image:
    """Return a black image of ``image``'s size and mode."""
    return PILImage.new(image.mode, image.size)


def gate_of(pipeline: Any) -> SafetyGate | None:
    """Return the safety gate of ``pipeline``'s model; None: its images are not checked."""
    return getattr(pipeline, "safety", None)


def review_call(pipeline: Any, results: list[list[Image]]) -> list[tuple[list[Image], list[bool] | None]]:
    """Review the images of one pipeline call (``results``: each job's) with one checker call; return
    each job's images and flags (None: not checked)."""
    gate = gate_of(pipeline)
    if gate is None:
        return [(images, None) for images in results]
    reviewed, flags = gate.review([image for images in results for image in images])
    answers: list[tuple[list[Image], list[bool] | None]] = []
    offset = 0
    for images in results:
        end = offset + len(images)
        answers.append((reviewed[offset:end], flags[offset:end]))
        offset = end
    return answers
