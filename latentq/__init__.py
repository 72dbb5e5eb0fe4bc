"""latentq's shared package: what more than one process kind imports (the job contract, errors,
settings, Redis key layout, model registry, job records and their view, the RQ job writer,
webhook deliveries and accounts, the SSRF guard, storage).

``api`` (FastAPI), ``worker`` (torch, diffusers) and ``dispatcher`` (httpx) import it. It starts
no process and imports none of them, nor FastAPI, torch or httpx (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
