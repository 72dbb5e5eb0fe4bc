"""``make run``: the whole stack on this machine, stopped together with Ctrl-C.

Starts Redis and a SeaweedFS S3 server (unless ``LATENTQ_REDIS_URL`` /
``LATENTQ_S3_ENDPOINT_URL`` point at ones you run), one worker, the webhook dispatcher and the API on
``127.0.0.1:$PORT``; keeps state under ``.run/`` (Redis with its append-only file: jobs outlive a
restart of the stack); restarts the worker and the dispatcher when they exit; prints a
ready-to-paste curl example.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path

from latentq.settings import CommonSettings, get_registry
from latentq_dev.devstack import Process, RedisServer, S3Server, wait_until, write_private
from latentq_dev.stack_models import StackConfigError, serve_default

#: Where ``make run`` lets webhooks go: a receiver on this machine's port 9000.
DEV_WEBHOOK_HOSTS = "127.0.0.1:9000,localhost:9000,[::1]:9000"
#: Seconds the whole stack may take to become ready.
READY_TIMEOUT_S = 300.0
#: The stack's processes that are restarted when they exit (others end the stack).
RESTARTED = ("worker", "dispatcher")
#: Longest wait before restarting a process, seconds.
MAX_BACKOFF_S = 30.0
#: Seconds a process must have run for its next exit to wait the shortest time again.
STABLE_S = 60.0


def dev_api_key(state: Path) -> str:
    """Return the development API key kept in ``state/api_key``, making one on first use."""
    path = state / "api_key"
    if not path.exists():
        write_private(path, f"lq_dev_{secrets.token_urlsafe(24)}\n")
    return path.read_text().strip()


def start_services(state: Path, env: dict[str, str], started: list) -> None:
    """Start Redis and S3 unless configured, adding their settings to ``env``."""
    if not env.get("LATENTQ_REDIS_URL"):
        redis = RedisServer(state / "redis", durable=True).start()  # jobs outlive a restart
        started.append(redis)
        env["LATENTQ_REDIS_URL"] = redis.url
    if not env.get("LATENTQ_S3_ENDPOINT_URL"):
        bucket = env.setdefault("LATENTQ_S3_BUCKET", "latentq")
        s3 = S3Server(state / "s3")
        started.append(s3)
        s3.start(bucket)
        env.update(s3.env(bucket))


def metrics_ports(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Return the environment of the worker, the dispatcher and the API: one ``LATENTQ_METRICS_PORT``
    set for the stack goes to the worker, the next port to the dispatcher, none to the API (which
    serves ``/metrics`` on its own port), so that no two of them try to listen on one port."""
    port = env.get("LATENTQ_METRICS_PORT")
    if not port:
        return {"worker": env, "dispatcher": env, "api": env}
    api = {name: value for name, value in env.items() if name != "LATENTQ_METRICS_PORT"}
    return {"worker": env, "dispatcher": {**env, "LATENTQ_METRICS_PORT": str(int(port) + 1)}, "api": api}


def start_stack(state: Path, env: dict[str, str], port: int, started: list, access_log: bool = True) -> None:
    """Start services (unless configured), one worker, the webhook dispatcher and the API on ``port``;
    wait until ready.

    Everything started is appended to ``started`` as it starts, so the caller can stop it all
    (in reverse order) even when a later step fails.
    """
    start_services(state, env, started)
    # What ``latentq-admin`` run in this checkout reads to reach this stack (owner-only: it may
    # carry a Redis password).
    write_private(state / "admin.env", f"LATENTQ_REDIS_URL={env['LATENTQ_REDIS_URL']}\n")
    logs = state / "logs"
    envs = metrics_ports(env)
    worker = Process.start("worker", [sys.executable, "-m", "worker"], logs / "worker.log", envs["worker"])
    started.append(worker)
    dispatcher_argv = [sys.executable, "-m", "dispatcher"]
    started.append(Process.start("dispatcher", dispatcher_argv, logs / "dispatcher.log", envs["dispatcher"]))
    api_argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                "--port", str(port)] + ([] if access_log else ["--no-access-log"])  # fmt: skip
    api = Process.start("api", api_argv, logs / "api.log", envs["api"])
    started.append(api)
    ready = f"http://127.0.0.1:{port}/readyz"
    for process in (worker, api):
        wait_until(lambda: urllib.request.urlopen(ready, timeout=2).status == 200, READY_TIMEOUT_S,
                   "the API and a worker", process)  # fmt: skip


class Supervisor:
    """Restarts the stack's worker and dispatcher when they exit, after a wait that doubles with each
    quick exit (1 s up to ``MAX_BACKOFF_S``); any other process exiting ends the stack."""

    def __init__(self, started: list, restarted: tuple[str, ...] = RESTARTED) -> None:
        self.started, self.restarted = started, restarted
        self.since: dict[str, float] = {}
        self.exits: dict[str, int] = {}
        self.due: dict[str, float] = {}

    def watch(self) -> Process:
        """Watch until a process that is not restarted exits; return it."""
        while True:
            for index, item in enumerate(self.started):
                if not isinstance(item, Process):
                    continue
                self.since.setdefault(item.name, time.monotonic())
                if item.popen.poll() is None:
                    continue
                if item.name not in self.restarted:
                    return item
                self._restart(index, item)
            time.sleep(0.5)

    def _restart(self, index: int, process: Process) -> None:
        now = time.monotonic()
        if process.name not in self.due:
            quick = now - self.since[process.name] < STABLE_S
            self.exits[process.name] = self.exits.get(process.name, 0) + 1 if quick else 1
            wait_s = min(MAX_BACKOFF_S, 2.0 ** (self.exits[process.name] - 1))
            self.due[process.name] = now + wait_s
            print(f"{process.name} exited with code {process.popen.returncode}; restarting in {wait_s:.0f} s "
                  f"(see {process.log_path})", file=sys.stderr, flush=True)  # fmt: skip
        elif now >= self.due[process.name]:
            del self.due[process.name]
            self.started[index] = process.restart()
            self.since[process.name] = now


def stop_all(started: list) -> None:
    """Stop everything ``start_stack`` started, last first."""
    for item in reversed(started):
        item.stop()


def curl_example(port: int, key: str, model: str) -> str:
    """Return the walk-through a user pastes into a shell, drawing with the served default ``model``
    at its own default size."""
    body = '{"prompt":"a lighthouse at dusk","steps":20,"seed":42}'
    stability_body = '{"text_prompts":[{"text":"a lighthouse at dusk"}],"steps":20}'
    return f"""
latentq is ready on http://127.0.0.1:{port}  (Ctrl-C stops everything; logs in .run/logs/)

  export KEY={key}
  curl -s -H "Authorization: Bearer $KEY" -d '{body}' http://127.0.0.1:{port}/v1/generate
  curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{port}/v1/jobs/<id>

  Models: curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{port}/v1/models
  Playground (paste the key): http://127.0.0.1:{port}/   API docs: http://127.0.0.1:{port}/docs
  Stability v1 (waits, answers with the PNG):
  curl -s -H "Authorization: Bearer $KEY" -H "Accept: image/png" -o out.png \\
    -d '{stability_body}' http://127.0.0.1:{port}/v1/generation/{model}/text-to-image
"""


def _interrupt(*_: object) -> None:
    # SIGTERM stops the stack like Ctrl-C does.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the stack until Ctrl-C or until a process exits; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=Path(".run"), help="state folder (default .run)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="API port")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("LATENTQ_API_KEYS", dev_api_key(state))
    env.setdefault("LATENTQ_EMBEDDED_MODEL_DIR", str(state / "models"))
    env.setdefault("LATENTQ_LOG_FORMAT", "text")  # logs for people; production's are JSON lines
    # A local stack: webhooks may go to a receiver on this machine, on its port only (never to
    # Redis', S3's or the API's port, which any caller could otherwise make the dispatcher POST to).
    env.setdefault("LATENTQ_WEBHOOK_ALLOWED_HOSTS", DEV_WEBHOOK_HOSTS)
    # One worker serving every registered model, unless told otherwise.
    try:  # the registry and the worker's models, checked before anything starts
        registry = get_registry(CommonSettings())
        env.setdefault("LATENTQ_WORKER_MODELS", ",".join(registry.ids()))
        default_model, note = serve_default(env, registry)
    except (StackConfigError, ValueError) as error:  # ValueError: a registry or setting refused
        print(f"make run: {error}", file=sys.stderr)
        return 2
    if note:
        print(f"make run: {note}", file=sys.stderr)
    started: list = []
    # Explicit, because a shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        start_stack(state, env, args.port, started)
        print(curl_example(args.port, env["LATENTQ_API_KEYS"].split(",")[0], default_model), flush=True)
        failed = Supervisor(started).watch()
        print(
            f"{failed.name} exited with code {failed.popen.returncode}; see {failed.log_path}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave servers running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(started)


if __name__ == "__main__":
    sys.exit(main())
