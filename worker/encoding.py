"""Image files: PNG, JPEG or WebP, carrying the parameters that made them.

Every file records its generation parameters in AUTOMATIC1111's "parameters" text (a PNG
``parameters`` text chunk; the EXIF UserComment of JPEG and WebP), which PNG-info readers
show, plus (PNG, text-to-image) a ``latentq`` chunk holding a ``POST /v1/generate`` body that
reproduces it.
"""

from __future__ import annotations

import io
import json

from PIL import Image as PILImage
from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo

import latentq
from latentq.contract import JobSpec

#: MIME type of each output format.
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: Quality of the lossy formats (Pillow's 0-100 scale).
LOSSY_QUALITY = 90
#: zlib level of PNG files when none is configured (``LATENTQ_PNG_COMPRESS_LEVEL``): see
#: docs/BENCHMARKS.md for the size and time of each level.
PNG_COMPRESS_LEVEL = 1

#: AUTOMATIC1111's names for our samplers, so its readers show familiar ones.
A1111_SAMPLERS = {
    "DDIM": "DDIM", "DDPM": "DDPM", "K_DPMPP_2M": "DPM++ 2M", "K_DPMPP_2S_ANCESTRAL": "DPM++ 2S a",
    "K_DPM_2": "DPM2", "K_DPM_2_ANCESTRAL": "DPM2 a", "K_EULER": "Euler", "K_EULER_ANCESTRAL": "Euler a",
    "K_HEUN": "Heun", "K_LMS": "LMS", "UNIPC": "UniPC", "LCM": "LCM",
}  # fmt: skip

# EXIF tags: the Exif sub-IFD pointer and UserComment, where A1111 keeps parameters in JPEG/WebP.
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def a1111_sampler(sampler: str) -> str:
    """Return AUTOMATIC1111's display name of ``sampler`` (``DPM++ 2M Karras`` for ``K_DPMPP_2M_KARRAS``)."""
    base = sampler.removesuffix("_KARRAS")
    return A1111_SAMPLERS[base] + (" Karras" if base != sampler else "")


def _prompt_text(prompts: list[tuple[str, float]]) -> str:
    return ", ".join(text if weight == 1 else f"({text}:{weight:g})" for text, weight in prompts)


def parameters_text(spec: JobSpec, seed: int) -> str:
    """Return the A1111 "parameters" text of the image of ``spec`` made with ``seed``."""
    positive = [(p.text, p.weight) for p in spec.prompts if p.weight > 0]
    negative = [(p.text, -p.weight) for p in spec.prompts if p.weight < 0]
    # LoRA adapters as AUTOMATIC1111 writes them: <lora:name:weight> tags after the prompt.
    lines = [
        " ".join([_prompt_text(positive), *(f"<lora:{lora.id}:{lora.weight:g}>" for lora in spec.loras)])
    ]
    if negative:
        lines.append(f"Negative prompt: {_prompt_text(negative)}")
    settings = [
        f"Steps: {spec.steps}", f"Sampler: {a1111_sampler(spec.sampler)}", f"CFG scale: {spec.cfg_scale:g}",
        f"Seed: {seed}", f"Size: {spec.width}x{spec.height}", f"Model: {spec.model}",
    ]  # fmt: skip
    if spec.task == "image-to-image" and spec.strength is not None:
        settings.append(f"Denoising strength: {spec.strength:g}")  # A1111's name for diffusers' strength
    if spec.task != "text-to-image":
        settings.append(f"Task: {spec.task}")
    if spec.control_model is not None:  # as AUTOMATIC1111's ControlNet extension writes it
        settings.append(
            f'ControlNet 0: "Module: {spec.control_preprocess}, Model: {spec.control_model}, '
            f"Weight: {spec.control_strength:g}, Guidance Start: {spec.control_start:g}, "
            f'Guidance End: {spec.control_end:g}"'
        )
    if spec.style_preset:
        settings.append(f"Style preset: {spec.style_preset}")
    settings.append(f"Version: latentq {latentq.__version__}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def reproduce_request(spec: JobSpec, seed: int) -> dict:
    """Return a ``POST /v1/generate`` body that makes this one image again (style already applied)."""
    return {
        "model": spec.model,
        "text_prompts": [{"text": p.text, "weight": p.weight} for p in spec.prompts],
        "width": spec.width, "height": spec.height, "steps": spec.steps, "cfg_scale": spec.cfg_scale,
        "sampler": spec.sampler, "seed": seed, "output_format": spec.output_format,
    } | ({"loras": [lora.model_dump() for lora in spec.loras]} if spec.loras else {})  # fmt: skip


def encode_image(image: Image, spec: JobSpec, seed: int, png_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Return ``image`` as a file in ``spec.output_format``, with its generation parameters embedded;
    a PNG compressed at zlib level ``png_level`` (0: stored, 9: smallest and slowest)."""
    text = parameters_text(spec, seed)
    buffer = io.BytesIO()
    if spec.output_format == "png":
        info = PngInfo()
        info.add_text("parameters", text)
        # Other tasks, and controlled jobs, also need their input images to be redone.
        if spec.task == "text-to-image" and spec.control_model is None:
            info.add_text("latentq", json.dumps(reproduce_request(spec, seed)))
        image.save(buffer, format="PNG", pnginfo=info, compress_level=png_level)
    else:
        exif = PILImage.Exif()
        # A1111's encoding of UserComment: the "UNICODE" charset marker, then UTF-16 big-endian.
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
        image.save(buffer, format=spec.output_format.upper(), quality=LOSSY_QUALITY, exif=exif.tobytes())
    return buffer.getvalue()
