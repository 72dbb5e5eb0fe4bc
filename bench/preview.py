"""What live previews cost: the same jobs with and without a preview every 5 steps, side by side.

The embedded tiny model in this process (no Redis: the preview is made and discarded), K_EULER,
20 steps, at 256x256 and 512x512; jobs alternate with and without previews so drift hits both.

    .venv/bin/python -m bench.preview [--jobs 10] [--json bench/results/preview.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import write_result
from latentq.contract import JobSpec, WeightedPrompt
from worker.runner import PREVIEW_EVERY


def main() -> int:
    """Measure; print a table; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from worker.diffusion.pipelines import WarmPipeline
    from worker.embedded.models import build_tiny_model

    with tempfile.TemporaryDirectory() as temp:
        pipeline = WarmPipeline.load(str(build_tiny_model(Path(temp) / "tiny-sd")), "cpu")
    rows = {}
    for side in (256, 512):
        spec = JobSpec(
            job_id="bench", model="tiny-sd", prompts=[WeightedPrompt(text="a lighthouse", weight=1.0)],
            width=side, height=side, steps=20, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER",
        )  # fmt: skip
        made: list[int] = []

        def with_preview(step: int, total: int, latents: object, made: list[int] = made) -> bool:
            if step % PREVIEW_EVERY == 0 or step >= total:
                made.append(len(pipeline.preview(latents)))
            return False

        times: dict[str, list[float]] = {"without": [], "with": []}
        pipeline.generate(spec, {})  # warm this size
        for _ in range(args.jobs):
            for name, hook in (("without", lambda *_: False), ("with", with_preview)):
                started = time.perf_counter()
                pipeline.generate(spec, {}, hook)
                times[name].append(time.perf_counter() - started)
        without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
        rows[f"{side}x{side}"] = {
            "median_ms_without": round(without * 1000, 1), "median_ms_with": round(with_ * 1000, 1),
            "overhead_percent": round((with_ / without - 1) * 100, 2), "preview_bytes": made[-1],
        }  # fmt: skip
        print(f"{side}x{side}: {rows[f'{side}x{side}']}")
    write_result(args.json, {"benchmark": "preview", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
