"""The ``latentq`` command: generate, redraw and upscale images, list and cancel jobs, list models.

Configured by ``LATENTQ_URL`` and ``LATENTQ_API_KEY`` or ``--url`` and ``--api-key``. Progress goes to
stderr (a bar on a terminal, a line per event otherwise), saved paths to stdout; an API error prints
its name and message and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from latentq_client import __version__
from latentq_client.client import Client
from latentq_client.errors import LatentqError
from latentq_client.events import Event
from latentq_client.jobs import DEFAULT_WAIT_S, Job
from latentq_client.terminal_images import InlineImage, shows_inline_images

Command = Callable[[Client, argparse.Namespace], int]


def parse_size(text: str) -> tuple[int, int]:
    """Return the (width, height) of ``WIDTHxHEIGHT``, pixels."""
    width, separator, height = text.lower().partition("x")
    if not (separator and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 512x512 (got {text!r})")
    return int(width), int(height)


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``/v1/generate`` fields the generate and img2img commands share (None: not given)."""
    return {
        "model": args.model,
        "negative_prompt": args.negative_prompt,
        "steps": args.steps,
        "seed": args.seed,
        "cfg_scale": args.cfg_scale,
        "sampler": args.sampler,
        "samples": args.samples,
        "style_preset": args.style,
        "output_format": args.format,
        "preview": True if args.preview else None,
    }


def given(fields: dict[str, Any]) -> dict[str, Any]:
    """Return ``fields`` without those left out (None), so the model's defaults apply."""
    return {name: value for name, value in fields.items() if value is not None}


def show_event(event: Event, progress: Progress | None, console: Console, inline: bool) -> None:
    """Report one event: on the bar when there is one, else as a line."""
    if event.name == "progress" and event.total_steps:
        if progress is None:
            console.print(f"step {event.step}/{event.total_steps}")
        else:
            progress.update(progress.task_ids[0], completed=event.step, total=event.total_steps)
    elif event.name == "preview" and (jpeg := event.preview_jpeg) is not None:
        if inline and progress is not None:
            progress.console.print(InlineImage(jpeg))
        elif progress is None:
            console.print(f"preview at step {event.step} ({len(jpeg)} bytes of JPEG)")
        else:
            progress.update(progress.task_ids[0], description=f"running (preview at step {event.step})")
    elif progress is None:
        console.print(event.name)
    else:
        progress.update(progress.task_ids[0], description=event.name)


def follow(job: Job, console: Console, timeout: float) -> Job:
    """Follow ``job``'s events to its end, reporting them on ``console``; return it."""
    inline = shows_inline_images(os.environ)
    if not console.is_terminal:
        for event in job.events(timeout):
            show_event(event, None, console, inline)
        return job
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        progress.add_task(job.data.get("status", "queued"), total=None)
        for event in job.events(timeout):
            show_event(event, progress, console, inline)
    return job


def finish(job: Job, args: argparse.Namespace, console: Console) -> int:
    """Follow ``job`` to its end and save its images into ``args.output``; print their paths."""
    console.print(f"job {job.id}")
    try:
        follow(job, console, args.timeout)
    except KeyboardInterrupt:
        # Leaving stops only the following: the job runs on, and may still be wanted.
        console.print(f"job {job.id} goes on; `latentq cancel {job.id}` stops it")
        raise
    for path in job.save(args.output, args.timeout):
        print(path)
    return 0


def generate_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq generate PROMPT``: text-to-image."""
    width, height = args.size or (None, None)
    fields = given({**sampling_fields(args), "width": width, "height": height})
    return finish(client.generate(args.prompt, **fields), args, args.console)


def img2img_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq img2img PROMPT IMAGE``: image-to-image, masked with ``--mask``."""
    mask_source = args.mask_source or ("MASK_IMAGE_WHITE" if args.mask else None)
    image_fields = {
        "init_image": args.image,
        "mask_image": args.mask,
        "mask_source": mask_source,
        "image_strength": args.strength,
    }
    fields = given({**sampling_fields(args), **image_fields})
    return finish(client.generate(args.prompt, **fields), args, args.console)


def upscale_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq upscale IMAGE``: enlarge an image."""
    fields = given(
        {"model": args.model, "width": args.width, "height": args.height, "output_format": args.format}
    )
    return finish(client.upscale(args.image, **fields), args, args.console)


def jobs_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq jobs``: the caller's jobs, newest first, one line each."""
    page = client.jobs.list(status=args.status, limit=args.limit, cursor=args.cursor)
    for job in page:
        created = job.data.get("created_at", "")
        print(f"{job.id}  {job.status:<9}  {job.data.get('model', '')}  {created}")
    if page.next_cursor:
        args.console.print(f"(more: latentq jobs --cursor {page.next_cursor})", markup=False, highlight=False)
    return 0


def cancel_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq cancel ID``: cancel a job."""
    print(f"{args.job_id}  {client.jobs.cancel(args.job_id).status}")
    return 0


def models_command(client: Client, args: argparse.Namespace) -> int:
    """``latentq models``: the registered models, their tasks and live workers."""
    for model in client.models():
        default = "  (default)" if model.get("default") else ""
        tasks = ",".join(model.get("tasks", []))
        print(f"{model['id']}  {tasks}  workers={model.get('workers', 0)}{default}")
    return 0


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of every command that makes images: where they go, their format, the wait."""
    parser.add_argument("-o", "--output", default=".", help="folder for the images (default: here)")
    parser.add_argument("--format", choices=("png", "jpeg", "webp"), help="image file format")
    parser.add_argument("--model", help="model id (latentq models); default: the service's default")
    parser.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S, help="seconds to wait for the job")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of the commands that sample: generate and img2img."""
    parser.add_argument("prompt")
    add_output_options(parser)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--steps", type=int, help="denoising steps (1-150)")
    parser.add_argument("--seed", type=int, help="0: the service picks one")
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--sampler", help="e.g. K_EULER, K_DPMPP_2M_KARRAS")
    parser.add_argument("--samples", type=int, help="images to make (1-10)")
    parser.add_argument("--style", help="a style preset, e.g. photographic")
    parser.add_argument(
        "--preview", action="store_true", help="show live previews (inline where the terminal can)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``latentq`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="latentq", description="latentq's command line.")
    parser.add_argument("--url", help="the API's URL (default: $LATENTQ_URL, else http://localhost:8000)")
    parser.add_argument("--api-key", help="the API key (default: $LATENTQ_API_KEY)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="text-to-image")
    add_sampling_options(generate)
    generate.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, e.g. 512x512")
    generate.set_defaults(run=generate_command)
    img2img = commands.add_parser("img2img", help="image-to-image (masked with --mask)")
    add_sampling_options(img2img)
    img2img.add_argument("image", help="the init image's file (its size is the output's)")
    img2img.add_argument("--strength", type=float, help="0-1: how much of the image to keep (0.35)")
    img2img.add_argument("--mask", help="a mask image's file: white is repainted")
    img2img.add_argument(
        "--mask-source", choices=("MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA")
    )
    img2img.set_defaults(run=img2img_command)
    upscale = commands.add_parser("upscale", help="enlarge an image")
    upscale.add_argument("image", help="the image's file")
    add_output_options(upscale)
    upscale.add_argument("--width", type=int, help="output width, pixels (default: twice the image)")
    upscale.add_argument("--height", type=int, help="output height, pixels")
    upscale.set_defaults(run=upscale_command)
    jobs = commands.add_parser("jobs", help="your jobs, newest first")
    jobs.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "canceled"))
    jobs.add_argument("--limit", type=int, help="how many (1-100, default 20)")
    jobs.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    jobs.set_defaults(run=jobs_command)
    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cancel_command)
    commands.add_parser("models", help="the registered models").set_defaults(run=models_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``latentq`` command with ``argv``; return its exit status."""
    args = build_parser().parse_args(argv)
    args.console = Console(stderr=True, soft_wrap=True)
    try:
        with Client(args.url, args.api_key) as client:
            run: Command = args.run
            return run(client, args)
    except LatentqError as error:
        field = f" (field {error.field})" if error.field else ""
        args.console.print(f"error: {error.name}: {error.message}{field}", markup=False, highlight=False)
        return 1
    except OSError as error:  # a local file: an image that is not there, a folder not writable
        args.console.print(f"error: {error}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
