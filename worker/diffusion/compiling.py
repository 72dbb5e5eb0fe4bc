"""``torch.compile`` of a warm model's denoiser without recompiles while it serves jobs.

Dynamo specialises a compiled graph on what it sees: with its default (``dynamic=None``) the first
call compiles for its exact shapes, the second differing shape recompiles with dynamic sizes, and
every change of batch (cfg <= 1 halves it), image size or prompt length can cost another compile,
on the one sampling thread (seconds on the tiny model, minutes for SDXL with inductor). Past
``torch._dynamo.config.recompile_limit`` the frame silently runs eagerly from then on.

So a compiled denoiser here is compiled with ``dynamic=True`` (batch, height, width and sequence
length are symbolic from the first compile), the served sizes are compiled at warm-up
(``LATENTQ_COMPILE_SIZES``), compilations are counted (``CompileWatch``: in the log, and on the
metrics as ``latentq_worker_torch_compiles_total{phase}``), a compilation while jobs run is a
logged warning, and hitting the recompile limit (dynamo's fallback to eager) is counted and logged.
The compile caches (inductor's kernels, Triton's) go under ``LATENTQ_COMPILE_CACHE_DIR``, meant to
be a persistent volume, so a restarted worker reuses the kernels it built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch.fx.experimental._config
from PIL import Image as PILImage
from PIL.Image import Image

from latentq.contract import JobKind, JobSpec, WeightedPrompt
from worker import metrics

log = logging.getLogger("latentq.worker")

#: Recompiles dynamo allows per code object before it falls back to eager (its default is 8): a
#: dynamic graph needs few, but each guard failure (a served size outside the dynamic range, a
#: batch of one, a LoRA slot change) takes one; past the limit every job of the shape runs slower.
RECOMPILE_LIMIT = 64

#: Where dynamo reports hitting the recompile limit (a warning, then eager for that frame).
_DYNAMO_LOGGERS = ("torch._dynamo.convert_frame", "torch._dynamo")


def compiled_frames() -> int:
    """Return how many frames dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


class _FallbackHandler(logging.Handler):
    """Counts dynamo's 'hit config.recompile_limit' warnings: each is a frame now run eagerly."""

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage():
            metrics.COMPILE_FALLBACKS.inc()
            log.warning("torch.compile hit its recompile limit: a denoiser frame now runs eagerly "
                        "(slower) for the shapes that recompiled; see LATENTQ_COMPILE_SIZES")  # fmt: skip


_FALLBACK_HANDLER = _FallbackHandler(logging.WARNING)


def configure_compile(cache_dir: Path | None) -> None:
    """Set up torch.compile for serving: the recompile limit, fallback counting and, when
    ``cache_dir`` is given, inductor's and Triton's caches under it."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # Duck sizing gives dimensions equal at the first compile one symbol: a square warm-up size
    # would guard height == width, and the first non-square job would recompile.
    torch.fx.experimental._config.use_duck_shape = False
    for name in _DYNAMO_LOGGERS:
        logger = logging.getLogger(name)
        if _FALLBACK_HANDLER not in logger.handlers:
            logger.addHandler(_FALLBACK_HANDLER)
    if cache_dir is not None:
        # Inductor and Triton read their cache folders from the environment each time they
        # compile (no API takes them); without this they default to /tmp, lost at every restart.
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))
        log.info("torch.compile caches under %s", cache_dir)


def compile_denoiser(module: torch.nn.Module, backend: str = "inductor") -> None:
    """Compile ``module`` in place (``nn.Module.compile``: the pipelines made ``from_pipe`` share
    it) with dynamic shapes, so new sizes and batch sizes do not each compile a new graph."""
    module.compile(backend=backend, dynamic=True)


class CompileWatch:
    """Counts the compilations of a compiled model's calls: during warm-up (expected) and while
    serving jobs (each a stall of the sampling thread, logged as a warning)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: Whether calls now are the warm-up's (compiling expected) rather than jobs'.
        self.warming = False
        #: Frames compiled during warm-up and during jobs, since this model was loaded.
        self.counts = {"warm-up": 0, "jobs": 0}

    def call(self, run: Any, what: str) -> Any:
        """Return ``run()``, counting the frames it compiled; ``what`` names the call in the log."""
        if not self.enabled:
            return run()
        before = compiled_frames()
        try:
            return run()
        finally:
            compiled = compiled_frames() - before
            if compiled:
                phase = "warm-up" if self.warming else "jobs"
                self.counts[phase] += compiled
                metrics.COMPILES.labels(phase).inc(compiled)
                if self.warming:
                    log.info("torch.compile: %d frame(s) compiled for %s", compiled, what)
                else:
                    log.warning("torch.compile recompiled %d frame(s) during a job (%s): add its size "
                                "to LATENTQ_COMPILE_SIZES", compiled, what)  # fmt: skip


def parse_sizes(sizes: list[str]) -> list[tuple[int, int]]:
    """Return ``WIDTHxHEIGHT`` strings as (width, height) pairs, pixels."""
    parsed = []
    for size in sizes:
        width, _, height = size.lower().partition("x")
        parsed.append((int(width), int(height)))
    return parsed


def served_shapes(
    task: JobKind, sizes: list[tuple[int, int]], batch: int
) -> list[tuple[JobSpec, dict[str, Image]]]:
    """Return the warm-up calls that compile what ``task`` jobs will run: batch 2 (cfg > 1) and
    batch 1 (cfg 1: dynamo specialises a dimension of 1) at each of ``sizes`` (pixels), and
    ``batch`` images (cfg > 1: 2 x ``batch``) at 64x64 (a dynamic batch is guarded to a range)."""
    shapes = [(64, 64, 7.0, batch)] + [
        (width, height, cfg, 1) for width, height in sizes for cfg in (7.0, 1.0)
    ]
    calls = []
    for width, height, cfg_scale, samples in shapes:
        spec = JobSpec(
            job_id="compile", model="compile", prompts=[WeightedPrompt(text="compile", weight=1.0)],
            width=width, height=height, steps=2, cfg_scale=cfg_scale, samples=samples, seed=1,
            sampler="K_EULER", task=task, strength=1.0,
        )  # fmt: skip
        inputs = {
            "init": PILImage.new("RGB", (width, height)),
            "mask": PILImage.new("L", (width, height), 255),
        }
        calls.append((spec, inputs))
    return calls
