"""The real services the integration tests use: starting Redis again after a test restarts it, and
a free local port for a daemon's web UI (parallel workers must not all take the default 8000)."""

from __future__ import annotations

import socket
import subprocess
import time

REDIS_SERVER_ARGS = [
    "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def redis_ping(url: str = "redis://127.0.0.1:6379") -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.exceptions.RedisError:
        return False


def start_redis() -> None:
    subprocess.run(["redis-server", *REDIS_SERVER_ARGS], check=True, timeout=20, capture_output=True)
    deadline = time.monotonic() + 20
    while not redis_ping():
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not come back within 20 s")
        time.sleep(0.2)


def free_port() -> int:
    """A local TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
