"""latentq's webhook dispatcher: delivers queued job events, signed, to the URLs jobs named.

``__main__`` (the process), ``delivery`` (the RQ function and what each attempt records),
``http`` (the client and the SSRF-pinned POST), ``signing`` (Standard Webhooks signatures).
"""
