"""Jobs that start from an image: image-to-image, masking and upscaling, checked at the door.

The input images are decoded and checked here (``api.uploads``) and normalised (init: RGB; mask:
greyscale, white = repaint, whatever its source), with no I/O. The submit stores them in S3 under
server-made keys before the job is queued; the job spec carries only their keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageOps

from api.uploads import decode_base64, open_image
from latentq.contract import GenerateRequest, JobKind
from latentq.errors import LatentqError
from latentq.models import ModelRegistry, ModelSpec, size_problem

#: Stability's defaults: IMAGE_STRENGTH 0.35, i.e. a step schedule starting at 0.65.
DEFAULT_IMAGE_STRENGTH = 0.35

_IMAGE_FIELDS = ("image_strength", "step_schedule_start", "step_schedule_end")


@dataclass
class Inputs:
    """A job's decoded input images, by name (``init``, ``mask``), and how they shape the job."""

    images: dict[str, Image.Image] = field(default_factory=dict)
    kind: JobKind = "text-to-image"
    strength: float | None = None
    schedule_end: float = 0.0

    @property
    def size(self) -> tuple[int, int] | None:
        """The output size the init image sets (else the control image), if there is one."""
        for name in ("init", "control"):
            if name in self.images:
                return self.images[name].size
        return None


def field_error(name: str, field_name: str, message: str) -> LatentqError:
    """Return (for the caller to raise) error ``name`` about ``field_name``, with ``message``
    prefixed by the field."""
    return LatentqError.for_field(name, field_name, f"{field_name}: {message}")


def request_kind(request: GenerateRequest) -> JobKind:
    """Return what ``request`` asks for; raise when image fields are given without their images."""
    if request.mask_source is not None:
        if request.init_image is None:
            raise field_error("invalid_init_image", "init_image", "is required with mask_source")
        return "masking"
    if request.mask_image is not None:
        raise field_error("invalid_mask_source", "mask_source", "is required with mask_image")
    if request.init_image is not None:
        return "image-to-image"
    for name in (*_IMAGE_FIELDS, "init_image_mode"):
        if name in request.model_fields_set:
            raise field_error(f"invalid_{name}", name, "is only used with init_image")
    return "text-to-image"


def check_kind(model: ModelSpec, kind: JobKind, registry: ModelRegistry) -> None:
    """Raise ``invalid_model`` unless ``model`` does jobs of ``kind``, naming the models that do."""
    if kind not in model.tasks:
        able = [m.id for m in registry.models.values() if kind in m.tasks]
        raise field_error(
            "invalid_model", "model", f"model '{model.id}' does not do {kind}; models that do: {able}"
        )


def read_inputs(request: GenerateRequest, model: ModelSpec, kind: JobKind) -> Inputs:
    """Decode and check the request's images for a ``kind`` job on ``model``."""
    if kind == "text-to-image":
        return Inputs()
    for name in ("width", "height"):
        if getattr(request, name) is not None:
            raise field_error(
                f"invalid_{name}", name, "not allowed with init_image: the output takes its size"
            )
    init = open_image(
        decode_base64(str(request.init_image), "init_image"), "init_image", model.limits.max_pixels
    )
    problem = size_problem(model.limits, *init.size)
    if problem:
        raise field_error("invalid_image_dimensions", "init_image", f"{problem[2]} for model '{model.id}'")
    if kind == "masking":
        return Inputs({"init": init.convert("RGB"), "mask": _mask(request, init)}, kind, strength=1.0)
    strength, end = _schedule(request)
    return Inputs({"init": init.convert("RGB")}, kind, strength=strength, schedule_end=end)


def _schedule(request: GenerateRequest) -> tuple[float, float]:
    """Return (share of the schedule run, share left unrun at the end) for an image-to-image request."""
    if request.init_image_mode == "IMAGE_STRENGTH":
        for name in ("step_schedule_start", "step_schedule_end"):
            if getattr(request, name) is not None:
                raise field_error(f"invalid_{name}", name, "is only used with init_image_mode STEP_SCHEDULE")
        strength = request.image_strength if request.image_strength is not None else DEFAULT_IMAGE_STRENGTH
        return 1.0 - strength, 0.0
    if request.image_strength is not None:
        raise field_error(
            "invalid_image_strength", "image_strength", "is only used with init_image_mode IMAGE_STRENGTH"
        )
    start = (
        request.step_schedule_start if request.step_schedule_start is not None else 1 - DEFAULT_IMAGE_STRENGTH
    )
    end = request.step_schedule_end or 0.0
    if end > 0 and end >= start:
        raise field_error(
            "invalid_step_schedule_end", "step_schedule_end", f"must be below step_schedule_start ({start:g})"
        )
    return start, end


def _mask(request: GenerateRequest, init: Image.Image) -> Image.Image:
    """Return the repaint mask: greyscale, the init image's size, white = repaint."""
    if request.mask_source == "INIT_IMAGE_ALPHA":
        if request.mask_image is not None:
            raise field_error(
                "invalid_mask_image", "mask_image", "is not used with mask_source INIT_IMAGE_ALPHA"
            )
        if "A" not in init.getbands() and "transparency" not in init.info:
            raise field_error("invalid_init_image", "init_image", "has no alpha channel for INIT_IMAGE_ALPHA")
        # Fully transparent pixels are repainted, fully opaque ones kept.
        return ImageOps.invert(init.convert("RGBA").getchannel("A"))
    if request.mask_image is None:
        raise field_error(
            "invalid_mask_image", "mask_image", f"is required with mask_source {request.mask_source}"
        )
    mask = open_image(decode_base64(request.mask_image, "mask_image"), "mask_image", init.width * init.height)
    if mask.size != init.size:
        raise field_error(
            "invalid_image_dimensions", "mask_image",
            f"is {mask.width}x{mask.height}; it must be the init image's size, {init.width}x{init.height}",
        )  # fmt: skip
    grey = mask.convert("L")
    return ImageOps.invert(grey) if request.mask_source == "MASK_IMAGE_BLACK" else grey


def upscale_size(
    image: Image.Image, width: int | None, height: int | None, model: ModelSpec
) -> tuple[int, int]:
    """Return the output size: ``width`` or ``height`` (aspect kept), else twice the image's."""
    if width is not None and height is not None:
        raise field_error(
            "invalid_height", "height", "give width or height, not both (the aspect ratio is kept)"
        )
    source_width, source_height = image.size
    if width is not None:
        size = (width, max(1, round(width * source_height / source_width)))
    elif height is not None:
        size = (max(1, round(height * source_width / source_height)), height)
    else:
        size = (source_width * 2, source_height * 2)
    if size[0] < source_width or size[1] < source_height:
        field_name = "width" if width is not None else "height"
        message = f"{size[0]}x{size[1]} is smaller than the image, {source_width}x{source_height}"
        raise field_error(f"invalid_{field_name}", field_name, message)
    limit = model.limits.max_pixels
    if size[0] * size[1] > limit:
        raise field_error("invalid_pixel_count", "width" if height is None else "height",
                     f"the output, {size[0]}x{size[1]}, would exceed {limit:,} pixels")  # fmt: skip
    return size
