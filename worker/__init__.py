"""latentq's GPU worker: keeps diffusers pipelines warm and runs generation jobs from RQ.

Three layers: process start-up (``worker.__main__``: load, warm up, report ready); the job loop
(``warm_worker``: the RQ worker and its rounds; ``rounds``: sampling rounds; ``context``: what a
job runs with; ``job_functions`` and ``runner``: one job to its terminal record;
``cancel_watch``; ``encoding``); and the diffusion layer (``worker.diffusion``, the only code
that touches torch and diffusers). ``worker.embedded`` builds the embedded tiny models.
"""
