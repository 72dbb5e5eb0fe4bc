"""The diffusion layer: the only code of the worker that imports torch and diffusers.

``pipelines`` (warm Stable Diffusion pipelines, batched sampling), ``upscalers``, ``prompts``
(weighted and long prompts), ``schedulers`` (samplers by Stability's names), ``preview`` (latent
previews), ``flow`` and ``flow_prompts`` (SD3 and FLUX, flow-matching transformers).
"""

from worker.diffusion.quiet import quiet_third_party

# Before any module of this layer imports diffusers: its import is when transformers' notice comes.
quiet_third_party()
