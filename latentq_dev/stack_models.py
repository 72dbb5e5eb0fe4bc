"""Which models ``make run``'s worker serves, checked before anything starts.

The stack's one worker serves ``LATENTQ_WORKER_MODELS`` (every registered model unless set). A
request naming no model goes to the default model's queue, and ``/readyz`` waits for a worker of
it, so a default the worker does not serve would leave ``make run`` waiting until its time-out and
every such request queued forever. Settled here instead, in one line each: unregistered ids and an
explicit ``LATENTQ_DEFAULT_MODEL`` the worker does not serve are refused; a default left implicit
becomes the first served model that draws from text, and the stack says so.
"""

from __future__ import annotations

from latentq.models import ModelRegistry


class StackConfigError(Exception):
    """A setting the stack cannot start with; its message is the one line to show."""


def served_ids(env: dict[str, str], registry: ModelRegistry) -> list[str]:
    """Return the ids ``LATENTQ_WORKER_MODELS`` names (the default model when it names none);
    raise ``StackConfigError`` for ids the registry lacks."""
    ids = [part.strip() for part in env.get("LATENTQ_WORKER_MODELS", "").split(",") if part.strip()]
    unknown = [model_id for model_id in ids if registry.get(model_id) is None]
    if unknown:
        raise StackConfigError(
            f"LATENTQ_WORKER_MODELS names unregistered models: {', '.join(unknown)} "
            f"(registered: {', '.join(registry.ids())})"
        )
    return ids or [registry.default_id]


def serve_default(env: dict[str, str], registry: ModelRegistry) -> tuple[str, str | None]:
    """Make the stack's default model one its worker serves, setting ``LATENTQ_DEFAULT_MODEL`` in
    ``env`` if needed; return the default's id and a note saying what was changed (None: nothing).
    Raise ``StackConfigError`` when no served model can be the default."""
    served = served_ids(env, registry)
    if registry.default_id in served:
        return registry.default_id, None
    listed = ", ".join(served)
    if env.get("LATENTQ_DEFAULT_MODEL"):
        raise StackConfigError(
            f"LATENTQ_DEFAULT_MODEL={registry.default_id} is not among LATENTQ_WORKER_MODELS ({listed}): "
            "requests naming no model would wait for a worker forever; serve it too, or choose one of those"
        )
    drawing = [model_id for model_id in served if "text-to-image" in registry.models[model_id].tasks]
    if not drawing:
        raise StackConfigError(
            f"LATENTQ_WORKER_MODELS ({listed}) has no model that draws from text: add one "
            f"(the default is {registry.default_id})"
        )
    env["LATENTQ_DEFAULT_MODEL"] = drawing[0]
    note = (f"LATENTQ_WORKER_MODELS does not serve {registry.default_id}: requests naming no model use "
            f"{drawing[0]} (LATENTQ_DEFAULT_MODEL={drawing[0]})")  # fmt: skip
    return drawing[0], note
