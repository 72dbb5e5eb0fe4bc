"""ControlNet requests checked at the door: the control image, the ControlNet and its settings.

A control image (a sketch, an edge map, a depth map, a pose) conditions text-to-image,
image-to-image and masking jobs alike through a registered ControlNet of the model's family. It
is decoded and checked like an init image (``api.uploads``), stored as RGB beside it and named
by the spec (``control_image_key``); without an init image it sets the output size.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from api.uploads import decode_base64, open_image
from latentq.contract import GenerateRequest
from latentq.errors import LatentqError
from latentq.models import ControlNetSpec, ModelRegistry, ModelSpec, size_problem

#: The request's ControlNet fields besides the image itself.
CONTROL_FIELDS = ("control_model", "control_strength", "control_start", "control_end", "control_preprocess")


def _error(name: str, field: str, message: str) -> LatentqError:
    return LatentqError.for_field(name, field, f"{field}: {message}")


def control_settings(request: GenerateRequest, model: ModelSpec, registry: ModelRegistry) -> dict[str, Any]:
    """Return the spec fields of the request's ControlNet settings ({} without ``control_image``);
    raise the named error of the first bad field."""
    if request.control_image is None:
        for name in CONTROL_FIELDS:
            if getattr(request, name) is not None:
                raise _error(f"invalid_{name}", name, "is only used with control_image")
        return {}
    controlnet = resolve_controlnet(registry, model, request.control_model)
    start = request.control_start if request.control_start is not None else 0.0
    end = request.control_end if request.control_end is not None else 1.0
    if start >= end:
        raise _error("invalid_control_end", "control_end", f"must be above control_start ({start:g})")
    strength = request.control_strength if request.control_strength is not None else 1.0
    return {
        "control_model": controlnet.id, "control_strength": strength, "control_start": start,
        "control_end": end, "control_preprocess": request.control_preprocess or "none",
    }  # fmt: skip


def resolve_controlnet(registry: ModelRegistry, model: ModelSpec, control_id: str | None) -> ControlNetSpec:
    """Return the ControlNet ``control_id`` (None: the first of ``model``'s family); raise
    ``invalid_control_model`` naming the ones that fit ``model``."""
    fitting = registry.controlnets_for(model.family)
    valid = ", ".join(controlnet.id for controlnet in fitting) or "none"
    if control_id is None:
        if not fitting:
            message = f"no ControlNet is registered for model '{model.id}' (family {model.family})"
            raise _error("invalid_control_model", "control_model", message)
        return fitting[0]
    controlnet = registry.controlnets.get(control_id)
    if controlnet is None:
        message = f"unknown ControlNet '{control_id}'; ControlNets for model '{model.id}': {valid}"
        raise _error("invalid_control_model", "control_model", message)
    if controlnet.family != model.family:
        message = (f"ControlNet '{control_id}' is for {controlnet.family} models, not model '{model.id}' "
                   f"({model.family}); ControlNets for it: {valid}")  # fmt: skip
        raise _error("invalid_control_model", "control_model", message)
    return controlnet


def read_control_image(request: GenerateRequest, model: ModelSpec, init: Image.Image | None) -> Image.Image:
    """Decode and check the control image: the init image's size if there is one, else a size
    ``model`` accepts (it sets the output size); returned as RGB."""
    try:
        data = decode_base64(str(request.control_image), "control_image")
        image = open_image(data, "control_image", model.limits.max_pixels)
    except LatentqError as error:
        if error.name != "invalid_image":
            raise
        message = error.message.removeprefix("control_image: ")
        raise _error("invalid_control_image", "control_image", message) from None
    if init is not None:
        if image.size != init.size:
            message = (f"is {image.width}x{image.height}; it must be the init image's size, "
                       f"{init.width}x{init.height}")  # fmt: skip
            raise _error("invalid_image_dimensions", "control_image", message)
        return image.convert("RGB")
    for name in ("width", "height"):
        if getattr(request, name) is not None:
            raise _error(f"invalid_{name}", name, "not allowed with control_image: the output takes its size")
    problem = size_problem(model.limits, *image.size)
    if problem:
        raise _error("invalid_image_dimensions", "control_image", f"{problem[2]} for model '{model.id}'")
    return image.convert("RGB")
