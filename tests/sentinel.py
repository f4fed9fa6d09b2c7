"""A real Redis Sentinel setup for tests: a master, one replica and one sentinel (quorum 1), each a
``redis-server`` / ``redis-sentinel`` process on a free loopback port, nothing on disk that outlives the test.

Failover is tuned to seconds (``down-after-milliseconds`` 1000), so a test can kill the master and watch the
replica take over."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.conftest import free_port

MASTER_NAME = "diffbir-test"


class SentinelCluster:
    def __init__(self, workdir: Path) -> None:
        exe, sentinel_exe = shutil.which("redis-server"), shutil.which("redis-sentinel")
        if exe is None or sentinel_exe is None:
            raise RuntimeError("redis-server and redis-sentinel are needed (apt-get install redis-sentinel)")
        self.exe, self.sentinel_exe, self.workdir = exe, sentinel_exe, workdir
        self.ports = [free_port(), free_port()]  # [master, replica] at the start
        self.sentinel_port = free_port()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinel: subprocess.Popen[bytes] | None = None

    def _server(self, port: int, *extra: str) -> None:
        argv = [self.exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--loglevel", "warning", *extra]
        self.procs[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _ping(port), 10, f"redis on {port}")

    def start(self) -> None:
        master, replica = self.ports
        self._server(master)
        self._server(replica, "--replicaof", "127.0.0.1", str(master))
        _wait(lambda: _role(replica) == "slave" and _link_up(replica), 20, "replica in sync")
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        log = (self.workdir / "sentinel.log").open("ab")
        self.sentinel = subprocess.Popen([self.sentinel_exe, str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(lambda: self.master_port() == master, 10, "sentinel watching the master")

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{self.sentinel_port}"]

    def master_port(self) -> int | None:
        try:
            client = redis.Redis(port=self.sentinel_port, socket_timeout=1)
            host_port = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            client.close()
        except redis.RedisError:
            return None
        return int(host_port[1]) if host_port else None

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Until the replica has every write the master had when this was called (replication is
        asynchronous). The target is fixed first: the replica acknowledges its offset about once a second,
        so while a worker keeps writing, "caught up with the master's offset now" may never be true."""
        port = self.master_port()
        assert port is not None
        master = redis.Redis(port=port, socket_timeout=1)
        target = int(master.info("replication")["master_repl_offset"])

        def caught_up() -> bool:
            replica = master.info("replication").get("slave0") or {}
            return bool(replica) and int(replica.get("offset", -1)) >= target

        _wait(caught_up, timeout_s, "replica caught up")

    def kill_master(self, timeout_s: float = 30.0) -> int:
        """SIGKILL the current master and wait until the sentinel promoted the replica; returns its port."""
        old = self.master_port()
        assert old is not None
        self.procs[old].kill()
        self.procs[old].wait()
        new = _wait(lambda: (p := self.master_port()) != old and p, timeout_s, "failover")
        _wait(lambda: _role(new) == "master", timeout_s, "new master")
        return int(new)

    def stop(self) -> None:
        for proc in [*self.procs.values(), self.sentinel]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _role(port: int) -> str | None:
    try:
        return str(redis.Redis(port=port, socket_timeout=1).info("replication")["role"])
    except redis.RedisError:
        return None


def _link_up(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _wait(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
