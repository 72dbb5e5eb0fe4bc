"""latentq's GPU worker: keeps a diffusers pipeline warm and runs generation jobs from RQ.

Three layers: process start-up (``worker.__main__``), the job loop (``worker.rq_worker``,
``worker.tasks``, ``worker.runner``) and the pipeline wrapper (``worker.pipeline``, the only
module that touches torch and diffusers at run time).
"""
