"""Live previews: a small JPEG from the current latents by a linear latent-to-RGB map.

No VAE call and no extra weights: each latent channel contributes a fixed RGB colour (the
"cheap approximation" factors AUTOMATIC1111 and ComfyUI use), so a preview costs a small matrix
product and a JPEG encode of an image 1/8 the output's side.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

#: RGB contribution of each of the 4 latent channels, SD 1.x/2.x.
SD_FACTORS = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
              (-0.2120, -0.2616, -0.7177))  # fmt: skip
#: RGB contribution of each latent channel, and the bias, SDXL.
SDXL_FACTORS = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                (-0.3165, -0.2492, -0.2188))  # fmt: skip
SDXL_BIAS = (0.1084, -0.0175, -0.0011)
#: JPEG quality of previews.
PREVIEW_QUALITY = 70


def preview_jpeg(
    latents: torch.Tensor,
    factors: tuple[tuple[float, ...], ...] = SD_FACTORS,
    bias: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> bytes:
    """Return a JPEG of the first image in ``latents`` (``[batch, 4, h, w]``), ``w`` x ``h`` pixels."""
    weights = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), weights) + torch.tensor(bias)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()
