"""LoRA adapters of a warm pipeline: loaded on first use, kept in a least-recently-used cache,
switched per pipeline call, never fused into the base weights.

diffusers loads an adapter through peft (``load_lora_weights(..., adapter_name=...)``): it wraps
the targeted layers of the UNet and text encoders, and each adapter adds its own small matrices.
``set_adapters(names, weights)`` picks the active ones before a call; a job without adapters
runs with them disabled (``disable_lora``), which computes exactly the base layers: the base
model's image, bit for bit. The image-to-image and inpainting pipelines share the modules (made
``from_pipe``), so one cache serves every task of a model.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentq.contract import LoraWeight
from latentq.loras import LoraSpec

log = logging.getLogger("latentq.worker")

#: Pipeline components LoRA adapters may add layers to.
LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class AdapterFile:
    """Where an adapter's weights are: a folder (or hub id) and the file in it (None: diffusers' guess)."""

    path: str
    weight_name: str | None = None


def adapter_file(lora: LoraSpec, embedded_dir: Path) -> AdapterFile:
    """Return where ``lora``'s weights are, building an embedded adapter under ``embedded_dir`` if needed."""
    if lora.embedded_name is not None:
        from worker.embedded.loras import LORA_BUILDERS, LORA_WEIGHT_NAME, ensure_tiny_lora

        if lora.embedded_name not in LORA_BUILDERS:
            raise ValueError(
                f"adapter {lora.id!r}: unknown embedded adapter; embedded: {sorted(LORA_BUILDERS)}"
            )
        folder = ensure_tiny_lora(embedded_dir / lora.embedded_name, lora.embedded_name)
        return AdapterFile(str(folder), LORA_WEIGHT_NAME)
    source = Path(lora.source)
    if source.is_file():
        return AdapterFile(str(source.parent), source.name)
    return AdapterFile(lora.source, lora.weight_name)


def adapter_bytes(pipe: Any, adapter_name: str) -> int:
    """Return the bytes of the parameters adapter ``adapter_name`` added to ``pipe``'s modules."""
    marker = f".{adapter_name}."
    total = 0
    for component in LORA_COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, parameter in module.named_parameters():
            if marker in f"{name}.":
                total += parameter.numel() * parameter.element_size()
    return total


class LoadedAdapters:
    """The adapters loaded into one pipeline, least recently used first, within a count and a
    memory cap (the adapters of the call being prepared always stay)."""

    def __init__(
        self, pipe: Any, locate: Callable[[str], AdapterFile], max_loaded: int, max_bytes: int = 0
    ) -> None:
        self.pipe = pipe
        self.locate = locate
        self.max_loaded = max_loaded
        #: Most bytes of loaded adapters; 0: only the count caps them.
        self.max_bytes = max_bytes
        #: Adapter id -> (peft adapter name, bytes), least recently used first.
        self.loaded: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._loads = 0
        #: Whether adapters are switched on in the modules (off after a call without adapters).
        self._enabled = True
        #: The (id, weight) pairs last given to ``set_adapters``: a round like the last one sets nothing.
        self._active: tuple[tuple[str, float], ...] = ()

    @property
    def loaded_bytes(self) -> int:
        """Bytes of every loaded adapter's parameters."""
        return sum(size for _name, size in self.loaded.values())

    def activate(self, loras: list[LoraWeight]) -> None:
        """Make ``loras`` (with their weights, in order) the active adapters of the next pipeline
        call; none: every adapter off, the base model exactly."""
        if not loras:
            if self.loaded and self._enabled:
                self.pipe.disable_lora()
                self._enabled = False
            return
        active = tuple((lora.id, lora.weight) for lora in loras)
        if self._enabled and active == self._active and all(lora.id in self.loaded for lora in loras):
            return
        wanted = {lora.id for lora in loras}
        for lora in loras:
            self._ensure(lora.id, wanted)
        if not self._enabled:
            self.pipe.enable_lora()
            self._enabled = True
        names = [self.loaded[lora.id][0] for lora in loras]
        self.pipe.set_adapters(names, [lora.weight for lora in loras])
        self._active = active

    def _ensure(self, lora_id: str, keep: set[str]) -> None:
        """Load adapter ``lora_id`` unless loaded (making room first); mark it most recently used."""
        if lora_id in self.loaded:
            self.loaded.move_to_end(lora_id)
            return
        self._make_room(keep)
        found = self.locate(lora_id)
        self._loads += 1
        name = f"lora{self._loads}"  # peft names are module keys: registry ids may hold dots
        started = time.perf_counter()
        options = {"weight_name": found.weight_name} if found.weight_name else {}
        self.pipe.load_lora_weights(found.path, adapter_name=name, **options)
        self.loaded[lora_id] = (name, adapter_bytes(self.pipe, name))
        log.info("loaded LoRA adapter %s (%.2f MiB) in %.2f s; %d loaded, %.2f MiB", lora_id,
                 self.loaded[lora_id][1] / 2**20, time.perf_counter() - started, len(self.loaded),
                 self.loaded_bytes / 2**20)  # fmt: skip

    def _make_room(self, keep: set[str]) -> None:
        """Unload least recently used adapters (not in ``keep``) until one more fits the caps."""
        for lora_id in list(self.loaded):
            full = len(self.loaded) >= self.max_loaded or (
                self.max_bytes and self.loaded_bytes >= self.max_bytes
            )
            if not full:
                return
            if lora_id not in keep:
                name, _size = self.loaded.pop(lora_id)
                self.pipe.delete_adapters(name)
                log.info("unloaded LoRA adapter %s (least recently used)", lora_id)
