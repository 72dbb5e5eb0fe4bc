"""A Redis Sentinel topology on loopback, for tests and benchmarks of failover: a master, its
replicas and three sentinels (``redis-server --sentinel``), each on a free port, with short
detection times so that a killed master is replaced within a few seconds."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from redis import Redis

from latentq_dev.devstack import Process, RedisServer, find_binary, free_port, wait_until

#: The master's name in the sentinels' configuration (``LATENTQ_REDIS_SENTINEL_MASTER``'s default).
MASTER_NAME = "mymaster"


class SentinelServer:
    """One ``redis-server --sentinel`` watching ``MASTER_NAME`` at ``master_port``."""

    def __init__(
        self, directory: Path, master_port: int, down_after_ms: int, failover_timeout_ms: int
    ) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.process: Process | None = None

    def start(self, timeout_s: float = 20.0) -> SentinelServer:
        """Write its configuration (the sentinel rewrites it as it learns), start it, wait for PING."""
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run 'apt-get install redis-server'")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process = Process.start(
            "sentinel", [binary, str(config), "--sentinel"], self.directory / "sentinel.log"
        )
        wait_until(lambda: _pings(self.port), timeout_s, f"sentinel on port {self.port}", self.process)
        return self

    def client(self) -> Redis:
        """A client of this sentinel (``SENTINEL ...`` commands)."""
        return Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        """Stop the sentinel."""
        if self.process:
            self.process.stop()


class SentinelTopology:
    """A durable master, ``replicas`` replicas of it and three sentinels, in ``directory``.

    ``down_after_ms``: how long a server must not answer before it counts as down. Not 1000 or
    less: a sentinel pings every second at most, and at 1000 ms it may count a master it has just
    switched to as down before its first ping is answered (seen here: a second, spurious failover
    right after the first)."""

    def __init__(
        self, directory: Path, replicas: int = 2, down_after_ms: int = 2000, failover_timeout_ms: int = 2000
    ) -> None:
        self.directory = Path(directory)
        self.master = RedisServer(self.directory / "master", durable=True)
        replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replicas = [
            RedisServer(self.directory / f"replica-{n}", durable=True, options=replica_of)
            for n in range(replicas)
        ]
        self.sentinels = [
            SentinelServer(
                self.directory / f"sentinel-{n}", self.master.port, down_after_ms, failover_timeout_ms
            )
            for n in range(3)
        ]

    @property
    def addresses(self) -> str:
        """The sentinels as ``LATENTQ_REDIS_SENTINELS`` names them."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def start(self, timeout_s: float = 30.0) -> SentinelTopology:
        """Start every server; return once each sentinel knows the replicas and the other sentinels
        (so that a failover can be agreed on)."""
        self.master.start()
        for replica in self.replicas:
            replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._settled, timeout_s, "the sentinels to find each other and the replicas")
        return self

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(MASTER_NAME)
                replicas = [r for r in client.sentinel_slaves(MASTER_NAME) if r["master-link-status"] == "ok"]
            if master["num-other-sentinels"] < 2 or len(replicas) < len(self.replicas):
                return False
        return True

    def master_port(self) -> int:
        """The port of the server the sentinels name master now."""
        with self.sentinels[0].client() as client:
            return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def current_master(self) -> RedisServer:
        """The server the sentinels name master now (the first one, until a failover)."""
        port = self.master_port()
        return next(server for server in [self.master, *self.replicas] if server.port == port)

    def _others(self, master: RedisServer) -> list[RedisServer]:
        return [server for server in [self.master, *self.replicas] if server is not master]

    def stall_replicas(self, seconds: float) -> None:
        """Cut the current master's replicas off for ``seconds`` while it goes on: what it takes
        meanwhile is not replicated, as under replication lag. The replicas are frozen (SIGSTOP),
        then the master drops their connections: else what it wrote to them would wait in their
        sockets' buffers and reach them all the same."""
        master = self.current_master()
        for replica in self._others(master):
            if replica.process is not None and replica.process.popen.poll() is None:
                replica.process.popen.send_signal(signal.SIGSTOP)
        with Redis(port=master.port, socket_timeout=2) as client:
            client.client_kill_filter(_type="replica")
        time.sleep(seconds)

    def resume_replicas(self) -> None:
        """Let frozen servers go on (SIGCONT)."""
        for server in [self.master, *self.replicas]:
            if server.process is not None and server.process.popen.poll() is None:
                server.process.popen.send_signal(signal.SIGCONT)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; return it."""
        master = self.current_master()
        assert master.process is not None
        master.process.popen.send_signal(signal.SIGKILL)
        master.process.popen.wait()
        return master

    def wait_for_promotion(self, killed: RedisServer, timeout_s: float = 30.0) -> RedisServer:
        """Wait until the sentinels name another server than ``killed`` master and it says it is
        one; return it."""

        def promoted() -> bool:
            port = self.master_port()
            if port == killed.port:
                return False
            with Redis(port=port, socket_timeout=2) as client:
                return client.info("replication")["role"] == "master"

        wait_until(promoted, timeout_s, "a replica to be promoted")
        return self.current_master()

    def stop(self) -> None:
        """Stop every server (sentinels first: they would fail over a stopping master)."""
        self.resume_replicas()
        for server in [*self.sentinels, *self.replicas, self.master]:
            server.stop()


def _pings(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
