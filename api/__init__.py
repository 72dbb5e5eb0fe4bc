"""latentq's HTTP API (FastAPI): validates, enqueues and reads jobs; never imports torch or the worker."""
