"""LoRA adapters of a compiled model: a fixed set of slots, hot-swapped, so no switch recompiles.

A compiled UNet's graph holds its LoRA layers' adapter names, ranks and active set: loading a new
adapter name, unloading one, or changing which are active would each recompile it. So with
``torch.compile`` the model gets ``slots`` adapter slots (``slot0``...), filled at start-up
(before the first compiled call) with registered adapters, padded to ``max_rank`` by diffusers'
hot-swap preparation (``enable_lora_hotswap(target_rank=...)``) and always all active. A job's
adapters are copied into slots in place (``load_lora_into_unet(..., hotswap=True)``; a slot
holding the wanted adapter is reused) and each slot's weight is written into its LoRA scaling
tensors (peft's ``set_adapters`` would replace them by Python floats, which the graph guards on);
unused slots have weight 0, which adds exact zeros: a job without adapters gets the base model's
image. The text encoders are not compiled (and diffusers cannot hot-swap them): a slot's text
encoder layers are unloaded and loaded again by name.

Limits: an adapter of rank above ``max_rank``, or changing layers the slots' first adapters did
not (the first registered adapters define the layers), cannot be swapped in: its job fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers.utils.peft_utils import delete_adapter_layers, set_weights_and_activate_adapters
from peft.tuners.lora import LoraLayer

from latentq.contract import LoraWeight
from worker.diffusion.adapters import AdapterFile

log = logging.getLogger("latentq.worker")

#: Text encoder components and the key prefix of their layers in a LoRA file.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def lora_layers(module: torch.nn.Module) -> list[tuple[str, Any]]:
    """Return ``module``'s peft LoRA layers with their names."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


class HotSwapAdapters:
    """``slots`` LoRA slots of one pipeline's UNet, hot-swapped per call (same interface as
    ``LoadedAdapters``: ``activate``)."""

    def __init__(
        self,
        pipe: Any,
        locate: Callable[[str], AdapterFile],
        initial: list[str],
        slots: int,
        max_rank: int,
    ) -> None:
        """Fill every slot with an adapter of ``initial`` (cycled) at weight 0: call before the
        first compiled call."""
        if not initial:
            raise ValueError("hot-swap slots need at least one adapter to fill them")
        self.pipe = pipe
        self.locate = locate
        self.max_rank = max_rank
        self.names = [f"slot{index}" for index in range(slots)]
        #: Adapter id held by each slot.
        self.holding: list[str] = []
        #: Per slot, each LoRA layer's scaling at weight 1 (alpha / rank of the adapter it holds).
        self.unit: list[dict[str, float]] = []
        #: When each slot was last used (a counter): the least recently used is swapped first.
        self.used = [0] * slots
        self._calls = 0
        self._active: tuple[tuple[str, float], ...] | None = None
        for index, name in enumerate(self.names):
            # diffusers pads to target_rank after the first adapter only: asked again per slot.
            pipe.unet.enable_lora_hotswap(target_rank=max_rank, check_compiled="ignore")
            found = locate(initial[index % len(initial)])
            pipe.load_lora_weights(found.path, adapter_name=name, **_options(found))
            self.holding.append(initial[index % len(initial)])
            self.unit.append(self._unit_scalings(name))
        for _name, layer in lora_layers(pipe.unet):
            layer.set_adapter(self.names)  # all slots active, always: the graph never changes
        self._set_weights([0.0] * slots)

    def activate(self, loras: list[LoraWeight]) -> None:
        """Make ``loras`` (with their weights) the active adapters of the next call; none: every
        slot at weight 0, the base model exactly."""
        active = tuple((lora.id, lora.weight) for lora in loras)
        if active == self._active:
            return
        if len(loras) > len(self.names):
            raise ValueError(f"{len(loras)} adapters named; this worker has {len(self.names)} slots")
        self._calls += 1
        weights = [0.0] * len(self.names)
        taken: set[int] = set()
        for lora in loras:
            slot = self._slot_for(lora.id, taken)
            taken.add(slot)
            self.used[slot] = self._calls
            weights[slot] = lora.weight
        self._set_weights(weights)
        self._active = active

    def _slot_for(self, lora_id: str, taken: set[int]) -> int:
        """Return the slot holding ``lora_id`` (not in ``taken``), swapping it into the least
        recently used free slot if none does."""
        for slot, held in enumerate(self.holding):
            if held == lora_id and slot not in taken:
                return slot
        slot = min((slot for slot in range(len(self.names)) if slot not in taken), key=self.used.__getitem__)
        self._swap(slot, lora_id)
        return slot

    def _swap(self, slot: int, lora_id: str) -> None:
        """Copy adapter ``lora_id`` into ``slot``: the UNet's layers in place, the text encoders' anew."""
        started = time.perf_counter()
        name, pipe, found = self.names[slot], self.pipe, self.locate(lora_id)
        options = _options(found)
        state, alphas, metadata = pipe.lora_state_dict(found.path, return_lora_metadata=True, **options)
        pipe.load_lora_into_unet(
            state, network_alphas=alphas, unet=pipe.unet, adapter_name=name, metadata=metadata,
            _pipeline=pipe, hotswap=True,
        )  # fmt: skip
        for component in TEXT_ENCODERS:
            encoder = getattr(pipe, component, None)
            if encoder is None:
                continue
            if name in getattr(encoder, "peft_config", {}):
                delete_adapter_layers(encoder, name)
                encoder.peft_config.pop(name, None)
            pipe.load_lora_into_text_encoder(
                state, network_alphas=alphas, text_encoder=encoder, prefix=component,
                lora_scale=pipe.lora_scale, adapter_name=name, _pipeline=pipe, metadata=metadata,
            )  # fmt: skip
        self.holding[slot] = lora_id
        self.unit[slot] = self._unit_scalings(name)
        self._active = None
        log.info("hot-swapped LoRA adapter %s into %s in %.2f s", lora_id, name,
                 time.perf_counter() - started)  # fmt: skip

    def _unit_scalings(self, name: str) -> dict[str, float]:
        """Return each UNet LoRA layer's scaling of slot ``name`` as loaded (weight 1)."""
        return {
            layer_name: float(layer.scaling[name])
            for layer_name, layer in lora_layers(self.pipe.unet)
            if name in layer.scaling
        }

    def _set_weights(self, weights: list[float]) -> None:
        """Give slot i weight ``weights[i]``: in place in the UNet's scaling tensors (no recompile),
        by peft's adapter weights in the text encoders."""
        with torch.no_grad():
            for layer_name, layer in lora_layers(self.pipe.unet):
                for slot, name in enumerate(self.names):
                    scaling = layer.scaling.get(name)
                    if isinstance(scaling, torch.Tensor):
                        scaling.fill_(weights[slot] * self.unit[slot].get(layer_name, 0.0))
        for component in TEXT_ENCODERS:
            encoder = getattr(self.pipe, component, None)
            if encoder is not None and getattr(encoder, "peft_config", None):
                present = [name for name in self.names if name in encoder.peft_config]
                set_weights_and_activate_adapters(
                    encoder, present, [weights[self.names.index(name)] for name in present]
                )


def _options(found: AdapterFile) -> dict[str, str]:
    return {"weight_name": found.weight_name} if found.weight_name else {}
