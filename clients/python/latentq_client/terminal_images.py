"""Inline images in terminals that speak iTerm2's image protocol (iTerm2, WezTerm, mintty), for the
command line's live previews; elsewhere previews are reported as text."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping

from rich.console import Console, ConsoleOptions
from rich.segment import ControlType, Segment

#: ``TERM_PROGRAM`` values of terminals that show iTerm2's inline images. kitty is not among them:
#: its graphics protocol takes PNG or raw pixels, and previews are JPEG, which would need an image
#: library the client does not depend on.
INLINE_IMAGE_TERMINALS = frozenset({"iTerm.app", "WezTerm", "mintty"})
#: Width of a shown preview, terminal cells.
PREVIEW_WIDTH_CELLS = 16


def shows_inline_images(environment: Mapping[str, str]) -> bool:
    """Return whether the terminal ``environment`` describes shows iTerm2's inline images."""
    # iTerm2 sets LC_TERMINAL, which ssh passes on, where TERM_PROGRAM does not survive.
    return (
        environment.get("TERM_PROGRAM") in INLINE_IMAGE_TERMINALS
        or environment.get("LC_TERMINAL") == "iTerm2"
    )


def inline_image_escape(image: bytes, width_cells: int = PREVIEW_WIDTH_CELLS) -> str:
    """Return the escape sequence that shows ``image`` (JPEG or PNG bytes) inline, ``width_cells`` wide."""
    encoded = base64.b64encode(image).decode("ascii")
    return f"\x1b]1337;File=inline=1;size={len(image)};width={width_cells};preserveAspectRatio=1:{encoded}\a"


class InlineImage:
    """A rich renderable of one inline image: written as a raw control sequence, so rich neither
    strips nor wraps it, and drops it when the output is not a terminal."""

    def __init__(self, image: bytes) -> None:
        self.escape = inline_image_escape(image)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        # A control segment has no width for rich's layout; the terminal draws the image and
        # moves the cursor below it.
        yield Segment(self.escape, None, [(ControlType.BELL,)])
        yield Segment.line()
