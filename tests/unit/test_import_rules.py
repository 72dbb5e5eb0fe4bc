"""The import rules of the layout (docs/ARCHITECTURE.md), checked on every module of every package:
the shared package imports no side, the API no torch or worker, the worker no FastAPI or
dispatcher, and only the worker's diffusion layer and embedded-model builders import torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("latentq", "api", "worker", "dispatcher", "latentq_dev")
TORCH = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
HTTP_SIDE = {"fastapi", "starlette", "uvicorn", "multipart"}

#: Top-level modules each package may not import.
FORBIDDEN: dict[str, set[str]] = {
    "latentq": TORCH | HTTP_SIDE | {"httpx", "api", "worker", "dispatcher", "latentq_dev"},
    "api": TORCH | {"worker", "dispatcher", "latentq_dev"},
    "worker": HTTP_SIDE | {"httpx", "api", "dispatcher", "latentq_dev"},
    "dispatcher": TORCH | HTTP_SIDE | {"api", "worker", "latentq_dev"},
    "latentq_dev": TORCH | HTTP_SIDE | {"api", "worker", "dispatcher"},
}
#: The worker's modules that may import torch: the diffusion layer and the embedded-model builders.
TORCH_ALLOWED = ("worker/diffusion/", "worker/embedded/")
#: Deprecated aliases of RQ function paths (remove in 0.3): each imports its new home on demand.
ALIASES = {"latentq/dispatcher.py": {"dispatcher"}, "worker/tasks.py": set()}


def modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_is_walked():
    assert {path.relative_to(REPO).parts[0] for path in modules()} == set(PACKAGES)
    assert len(modules()) > 60


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_module_follows_the_import_rules(path):
    relative = path.relative_to(REPO).as_posix()
    package = relative.split("/")[0]
    forbidden = FORBIDDEN[package] - ALIASES.get(relative, set())
    if package == "worker" and not relative.startswith(TORCH_ALLOWED):
        forbidden = forbidden | TORCH
    assert not imported(path) & forbidden, f"{relative} imports {sorted(imported(path) & forbidden)}"


def loaded_after_import(*modules_to_import: str) -> set[str]:
    """The top-level modules loaded in a fresh interpreter after importing ``modules_to_import``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules_to_import)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_the_running_api_and_dispatcher_load_no_torch_or_worker():
    loaded = loaded_after_import("api.app", "dispatcher.__main__", "dispatcher.delivery")
    assert not loaded & (TORCH | {"worker"})


def test_the_job_loop_and_the_shared_package_load_no_torch():
    shared = [f"latentq.{path.stem}" for path in (REPO / "latentq").glob("*.py") if path.stem != "__init__"]
    loop = ["worker.warm_worker", "worker.runner", "worker.job_functions", "worker.tasks", "worker.rounds"]
    loaded = loaded_after_import(*shared, *loop)
    assert not loaded & (TORCH | HTTP_SIDE | {"httpx", "api", "dispatcher"})


def test_the_queued_function_paths_resolve_to_the_functions_new_homes():
    from rq.utils import import_attribute

    from dispatcher.delivery import deliver
    from latentq.contract import DELIVER_FUNCTION, GENERATE_FUNCTION
    from worker.job_functions import generate

    # 0.1's paths, still queued (0.1 workers and dispatchers can run them), resolve through the aliases.
    assert (GENERATE_FUNCTION, DELIVER_FUNCTION) == ("worker.tasks.generate", "latentq.dispatcher.deliver")
    assert (
        import_attribute(GENERATE_FUNCTION) is generate is import_attribute("worker.job_functions.generate")
    )
    assert import_attribute(DELIVER_FUNCTION) is deliver is import_attribute("dispatcher.delivery.deliver")


#: The client package: installed alone (clients/python), on httpx and rich only.
CLIENT = REPO / "clients" / "python" / "latentq_client"
CLIENT_DEPENDENCIES = {"httpx", "rich", "latentq_client"}


@pytest.mark.parametrize("path", sorted(CLIENT.rglob("*.py")), ids=lambda path: path.name)
def test_the_client_imports_only_the_standard_library_httpx_and_rich(path):
    outside = imported(path) - set(sys.stdlib_module_names) - CLIENT_DEPENDENCIES
    assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)}"


def test_the_client_and_its_command_line_load_nothing_of_the_service():
    loaded = loaded_after_import("latentq_client", "latentq_client.cli")
    assert not loaded & (TORCH | HTTP_SIDE | {"latentq", "api", "worker", "dispatcher", "latentq_dev"})
