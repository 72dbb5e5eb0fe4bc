"""latentq's shared package: the job contract, settings, Redis key layout, job records and storage.

Both sides import it: ``api`` (FastAPI, no torch) and ``worker`` (torch, diffusers). It never
imports either side, nor torch.
"""

__version__ = "0.1.0"
