"""The diffusion layer: the only code of the worker that imports torch and diffusers.

``pipelines`` (warm Stable Diffusion pipelines, batched sampling), ``upscalers``, ``prompts``
(weighted and long prompts), ``schedulers`` (samplers by Stability's names), ``preview`` (latent
previews).
"""
