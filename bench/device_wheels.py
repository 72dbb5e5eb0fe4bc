"""Download the wheels a lent GPU machine needs to run ``bench.gpu_check`` (docs/BENCHMARKS.md).

The device image has Python 3.12 with a CUDA build of torch, transformers, tokenizers,
huggingface-hub, accelerate, peft, safetensors, numpy, scipy, pillow, httpx, pytest,
pytest-timeout, hypothesis and pyyaml, and no network; it lacks diffusers and everything latentq
itself imports (pydantic, Redis and RQ, boto3, uvicorn). Those are downloaded here, for CPython
3.12 on manylinux x86-64, each at the version installed in this virtual environment (the tested
one), into ``.whl`` (ignored by git), and installed there with ``pip install --no-index --no-deps
--target``. torch and the libraries above are used as the image has them: the check's ``env``
stage records their versions.

    .venv/bin/python -m bench.device_wheels [--dir .whl]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: Distributions the check imports that the device image lacks (its package list as read on
#: 2026-11-17): diffusers, latentq's own needs, and the test fixtures' (tests/conftest.py); and
#: small pure-Python ones these pin newer than the image may have (typing-extensions, zipp).
MISSING = (
    "diffusers", "importlib-metadata", "lazy-importer", "zipp", "typing-extensions",
    "pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection", "python-dotenv",
    "redis", "hiredis", "rq", "croniter",
    "boto3", "botocore", "s3transfer", "jmespath",
    "uvicorn", "standardwebhooks",
)  # fmt: skip
#: pip's platform tags of the device (x86-64, glibc 2.17 and later), CPython 3.12.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")  # fmt: skip


def requirements(names: tuple[str, ...] = MISSING) -> list[str]:
    """Return ``name==version`` for each of ``names``, at the version installed here."""
    return [f"{name}=={metadata.version(name)}" for name in names]


def download_command(target: Path, pinned: list[str]) -> list[str]:
    """Return the ``pip download`` command of ``pinned`` for the device into ``target``."""
    tags = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", *tags,
            "-d", str(target), *pinned]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Download the wheels; print their total size, MiB (a device call carries at most 64 MiB)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".whl"), help="folder for the wheels")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    code = subprocess.call(download_command(args.dir, requirements()))
    wheels = sorted(args.dir.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    print(f"{len(wheels)} wheels in {args.dir}, {size:.1f} MiB")
    return code


if __name__ == "__main__":
    sys.exit(main())
