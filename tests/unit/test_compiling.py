"""Counting torch.compile's compilations with real dynamo (``eager`` backend, tiny functions): the
watch tells warm-up compiles from job-time recompiles, and a recompile-limit fallback is counted."""

from __future__ import annotations

import logging

import pytest
import torch
from pydantic import ValidationError

from latentq.settings import WorkerSettings
from worker import metrics
from worker.diffusion.compiling import CompileWatch, configure_compile, parse_sizes


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_warm_up_compiles_are_expected_and_job_recompiles_are_counted_and_logged(caplog):
    configure_compile(None)
    metrics.declare_models([])

    def double(x):
        return x * 2 + 1

    compiled = torch.compile(double, backend="eager", dynamic=True)
    watch = CompileWatch(enabled=True)
    jobs_before = sample("latentq_worker_torch_compiles_total", phase="jobs")
    watch.warming = True
    watch.call(lambda: compiled(torch.ones(2, 3)), "warm-up 2x3")
    watch.warming = False
    assert watch.counts == {"warm-up": 1, "jobs": 0}
    watch.call(lambda: compiled(torch.ones(5, 7)), "5x7")  # dynamic: the same graph
    assert watch.counts["jobs"] == 0
    with caplog.at_level(logging.WARNING, logger="latentq.worker"):
        watch.call(lambda: compiled(torch.ones(1, 3)), "1x3")  # a dimension of 1 is specialised
    assert watch.counts["jobs"] == 1
    assert sample("latentq_worker_torch_compiles_total", phase="jobs") == jobs_before + 1
    assert "recompiled 1 frame(s) during a job (1x3)" in caplog.text


def test_a_watch_of_an_uncompiled_model_counts_nothing():
    watch = CompileWatch(enabled=False)
    assert watch.call(lambda: 42, "anything") == 42
    assert watch.counts == {"warm-up": 0, "jobs": 0}


def test_hitting_the_recompile_limit_is_counted_and_logged(caplog, monkeypatch):
    configure_compile(None)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)

    def scaled(x, mode):
        return x * len(mode)

    compiled = torch.compile(scaled, backend="eager")
    before = sample("latentq_worker_torch_compile_fallbacks_total")
    with caplog.at_level(logging.WARNING, logger="latentq.worker"):
        for mode in ("a", "bb", "ccc"):  # a string argument is guarded by value: one graph each
            assert compiled(torch.ones(2), mode).tolist() == [len(mode)] * 2
    assert sample("latentq_worker_torch_compile_fallbacks_total") > before
    assert "hit its recompile limit" in caplog.text


def test_compile_sizes_are_read_and_checked():
    settings = WorkerSettings(compile_sizes="512x512, 768x512")
    assert parse_sizes(list(settings.compile_sizes)) == [(512, 512), (768, 512)]
    assert WorkerSettings().compile_sizes == ()
    with pytest.raises(ValidationError, match="multiples of 8"):
        WorkerSettings(compile_sizes="512x500")
    with pytest.raises(ValidationError, match="WIDTHxHEIGHT"):
        WorkerSettings(compile_sizes="large")
