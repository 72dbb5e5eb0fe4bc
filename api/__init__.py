"""latentq's HTTP API (FastAPI). It validates, enqueues and reads jobs; it never imports torch or the worker."""
