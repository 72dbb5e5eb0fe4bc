"""Safety checkers: diffusers' ``StableDiffusionSafetyChecker`` (or any classifier with its
interface) and its ``CLIPImageProcessor``, loaded once per worker, run on decoded images."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL.Image import Image
from transformers import CLIPImageProcessor

from worker.diffusion.loading import resolve_device

log = logging.getLogger("latentq.worker")


class SafetyChecker:
    """A loaded safety checker: says which images it flags."""

    def __init__(self, checker: Any, processor: Any, device: torch.device) -> None:
        self.checker, self.processor, self.device = checker, processor, device

    @classmethod
    def load(cls, source: str, device: str = "auto") -> SafetyChecker:
        """Load the checker of ``source``: a folder or hub id holding it at its root (as
        ``CompVis/stable-diffusion-safety-checker``), or an SD pipeline folder (its ``safety_checker/``
        and ``feature_extractor/``); fp16 on CUDA, fp32 on CPU."""
        target = resolve_device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        pipeline_folder = (Path(source) / "safety_checker").is_dir()
        started = time.perf_counter()
        checker = StableDiffusionSafetyChecker.from_pretrained(
            source, subfolder="safety_checker" if pipeline_folder else ""
        ).to(target, dtype)
        checker.eval()
        processor = CLIPImageProcessor.from_pretrained(
            source, subfolder="feature_extractor" if pipeline_folder else ""
        )
        log.info("loaded safety checker %s on %s in %.1f s", source, target, time.perf_counter() - started)
        return cls(checker, processor, target)

    def flags(self, images: list[Image]) -> list[bool]:
        """Return, per image, whether the checker flags it (one checker call for them all)."""
        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        clip_input = self.processor(rgb, return_tensors="pt").pixel_values
        clip_input = clip_input.to(self.device, dtype=self.checker.dtype)
        # The checker blacks out its flagged inputs itself: it gets copies, the gate decides.
        arrays = [np.asarray(image, dtype=np.float32) / 255 for image in rgb]
        with torch.inference_mode():
            _, flagged = self.checker(clip_input=clip_input, images=arrays)
        return [bool(flag) for flag in flagged]
