"""Scale-out: 1, 2 and 4 worker processes on one Redis and one S3, under sustained load from many
clients; images/s per worker count, the API's responsiveness meanwhile, and proofs that no job
ran twice, that every accepted job finished with exactly its images, and that with two models on
different workers each job ran on a worker serving its model.

One command, on loopback only, in a temporary folder: a private Redis, SeaweedFS S3 and one API
process (uvicorn) for the whole run; for each worker count in ``--workers``, that many workers of
the embedded ``tiny-sd`` start (and warm up), ``--clients`` closed-loop clients each submit a
64x64, 20-step ``K_EULER`` job (every third asks for 2 images) with ``Prefer: wait`` and wait for
its end before the next (polling if the wait ends first), for ``--warmup-s`` (not counted) plus
``--seconds``; a probe times ``GET /healthz`` and ``GET /v1/jobs/{id}`` every 0.1 s meanwhile.
Then the workers drain and stop. The mixed scenario follows: two workers, one serving
``tiny-sd`` and one ``tiny-sdxl``, the clients alternating the two models.

Torch threads: no latentq setting sets them; a worker's torch takes ``OMP_NUM_THREADS`` (and the
BLAS ``MKL_NUM_THREADS``) from its environment at start-up. Each worker gets
``max(1, cores // workers)`` (``--threads`` overrides), so the workers together never ask for more
threads than the machine has cores, except where there are more workers than cores (one each).
The table shows the thread count a fresh interpreter's torch reports under that environment.

Proofs (``bench.scaleout.proofs``): RQ's result stream of each job (one entry per execution,
naming the worker) and the workers' RQ execution counters; the record's attempt and the event
stream's ``started``/terminal events; S3 objects and record images per job against the images
asked; for the mixed scenario, each execution's worker against the models it serves. Exit status
1 if any proof fails.

    .venv/bin/python -m bench.scaleout [--workers 1 2 4] [--clients 32] [--seconds 60]
        [--warmup-s 10] [--max-batch 8] [--threads 0] [--no-mixed] [--state DIR]
        [--json bench/results/scaleout.json]
"""
