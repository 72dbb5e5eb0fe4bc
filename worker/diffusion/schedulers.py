"""Samplers: Stability's names mapped to diffusers schedulers, each built ``from_config`` on the model's.

Every option that tells the variants apart is set explicitly, so a model whose saved
scheduler config already enables, say, Karras sigmas does not leak it into ``K_DPMPP_2M``.
"""

from __future__ import annotations

from typing import Any

import diffusers

# Stability's base names: (diffusers class, options). "DPM++ 2S a" has no exact diffusers
# equivalent: the second-order single-step DPM-Solver++ in its SDE form (which injects fresh
# noise each step, as ancestral samplers do) is the nearest.
_BASE: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "K_DPMPP_2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "K_DPMPP_2S_ANCESTRAL": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "K_DPM_2": ("KDPM2DiscreteScheduler", {}),
    "K_DPM_2_ANCESTRAL": ("KDPM2AncestralDiscreteScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "K_HEUN": ("HeunDiscreteScheduler", {}),
    "K_LMS": ("LMSDiscreteScheduler", {}),
    "UNIPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}  # fmt: skip

#: Base samplers whose diffusers scheduler supports Karras sigmas: each also has a ``_KARRAS`` name.
KARRAS_CAPABLE = ("K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2", "K_DPM_2_ANCESTRAL", "K_EULER",
                  "K_HEUN", "K_LMS")  # fmt: skip


def _table() -> dict[str, tuple[str, dict[str, Any]]]:
    table: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, (cls, options) in _BASE.items():
        if name in KARRAS_CAPABLE:
            table[name] = (cls, {**options, "use_karras_sigmas": False})
            table[f"{name}_KARRAS"] = (cls, {**options, "use_karras_sigmas": True})
        else:
            table[name] = (cls, options)
    return table


#: Every sampler name: (diffusers scheduler class name, options given to ``from_config``).
SCHEDULERS = _table()

#: The samplers of flow-matching models (SD3, FLUX; their config is a ``FlowMatch*`` scheduler's):
#: the registry's ``FAMILY_SAMPLERS`` lets only these names through to them (``K_HEUN`` to SD3 only:
#: the Heun scheduler takes no custom sigmas, which FLUX's pipeline passes).
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "K_EULER": ("FlowMatchEulerDiscreteScheduler", {}),
    "K_HEUN": ("FlowMatchHeunDiscreteScheduler", {}),
}


def is_flow_matching(config: Any) -> bool:
    """Whether the scheduler ``config`` is a flow-matching one (the model predicts a velocity)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def make_scheduler(sampler: str, config: Any) -> Any:
    """Return a fresh scheduler for ``sampler`` built from the model's scheduler ``config``."""
    cls, options = (FLOW_SCHEDULERS if is_flow_matching(config) else SCHEDULERS)[sampler]
    return getattr(diffusers, cls).from_config(config, **options)


class SchedulerCache:
    """One scheduler per sampler of a model, built on first use and reused by every later call:
    ``from_config`` costs about a millisecond (several for the multistep solvers), a share of a
    few-step job. Reuse is sound because a pipeline call starts with ``set_timesteps``, which resets
    each scheduler's per-call state (step index, solver history); tests check every sampler. Used by
    the one sampling thread only."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.schedulers: dict[str, Any] = {}

    def get(self, sampler: str) -> Any:
        """Return the scheduler of ``sampler``, ready for a call's ``set_timesteps``."""
        if sampler not in self.schedulers:
            self.schedulers[sampler] = make_scheduler(sampler, self.config)
        return self.schedulers[sampler]
