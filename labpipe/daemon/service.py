"""``labpipe serve``: the watcher and the worker(s) of one machine, started and kept alive together.

The supervisor runs ``labpipe watch``, ``[queue] serve_workers`` x ``labpipe worker`` and, when
asked, ``labpipe api`` as child processes (the very commands of the distributed deployment), hands
them its effective settings as ``LABPIPE_<SECTION>_<KEY>`` environment variables so every child
sees the same configuration, restarts a child that dies (with a growing pause if it keeps dying),
and on SIGTERM or SIGINT stops them: SIGTERM to each (the watcher stops taking files; a worker
finishes the task in progress and returns prefetched ones to the queue), then SIGKILL for any still
running after ``[queue] shutdown_timeout`` seconds. Work a killed worker held is handed to another
worker as soon as its lease expires (``[queue] lease_seconds``).

The children die with the supervisor: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``; Celery's pool processes do the same with their worker), so a supervisor
that is killed (SIGKILL, out of memory) leaves no watcher, worker or API behind to compete with the
next one. One supervisor per data folder: :class:`ServeLock` (``<root>/state/serve.lock``, an
``flock`` held for the supervisor's life, with its pid inside) makes a second ``labpipe serve`` on
the same folder refuse to start, with a message naming the one that runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.config import ENV_PREFIX, Settings
from labpipe.errors import LabpipeError
from labpipe.logs import get_logger

__all__ = [
    "ServeLock",
    "ServeRunningError",
    "Supervisor",
    "die_with_parent",
    "settings_environment",
    "worker_threads",
]

log = get_logger(__name__)


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as a ``LABPIPE_<SECTION>_<KEY>`` variable (storage root made absolute); a setting
    left unset (``None``) is left out, so the child sees it unset too."""
    env: dict[str, str] = {}
    for section, values in settings.as_dict().items():
        for key, value in values.items():
            if value is None:
                continue
            if section == "storage" and key == "root":
                value = str(Path(value).absolute())
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            env[f"{ENV_PREFIX}{section}_{key}".upper()] = text
    return env


def worker_threads(settings: Settings, workers: int, cpus: int | None = None) -> dict[str, str]:
    """Split the CPU cores between ``workers`` worker processes where the threads are left at 0 (all).

    Each worker's classifier (and DETR) would otherwise start one thread per core, so two workers
    on two cores run four busy threads and slow each other down. Returns the variables to set.

    >>> from labpipe.config import Settings
    >>> worker_threads(Settings(), 2, cpus=8)
    {'LABPIPE_CLASSIFIER_THREADS': '4'}
    >>> worker_threads(Settings(), 1, cpus=8)
    {}
    """
    if workers <= 1 or settings.classifier.threads > 0:
        return {}
    cpus = cpus or os.cpu_count() or 1
    return {f"{ENV_PREFIX}CLASSIFIER_THREADS": str(max(1, cpus // workers))}


_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library (loaded in the parent, so a child between fork and exec only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> None:
    """In a child, before ``exec``: be sent SIGKILL when the parent dies (Linux; elsewhere nothing).

    The kernel sends the signal when the *thread* that forked the child ends: the supervisor starts
    its children from its main thread. A parent that died before the call is caught by comparing
    ``getppid()``.
    """
    libc = _libc()
    if libc is None:
        return
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here: the serve lock still stops a second supervisor
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


class ServeRunningError(LabpipeError):
    """Another ``labpipe serve`` already runs on this data folder."""


class ServeLock:
    """``<root>/state/serve.lock``: an exclusive ``flock`` held by the running ``labpipe serve``.

    The lock goes with the process (the kernel releases it when the process dies, however it dies),
    so a stale file never blocks a start; the file holds the pid of the holder, for the message.
    """

    def __init__(self, root: Path) -> None:
        self.path = root.absolute() / "state" / "serve.lock"
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid written by the holder (or by the last holder), if any."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.path.read_text().strip() or 0) or None
        return None

    def acquire(self) -> None:
        """Take the lock for this process, or raise :class:`ServeRunningError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder()
            raise ServeRunningError(
                self.path.parent.parent,
                f"another labpipe serve (pid {pid or 'unknown'}) is already running on this data folder",
                f"stop it first: kill -TERM {pid}" if pid else "stop it first",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (also done by the kernel when this process ends)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


@dataclass
class _Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    not_before: float = 0.0


@dataclass
class Supervisor:
    """Starts, watches and stops the daemon's processes (module docstring)."""

    settings: Settings
    workers: int = 1
    api: bool = False
    """Also run ``labpipe api`` (the HTTP API and web UI) as a child."""
    python: str = sys.executable
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    """Where the children's output goes (appended); None: this process's own stdout and stderr."""
    children: list[_Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        base = [self.python, "-m", "labpipe.cli.main"]
        self.children = [_Child("watcher", [*base, "watch"])]
        self.children += [_Child(f"worker-{i + 1}", [*base, "worker"]) for i in range(max(1, self.workers))]
        if self.api:
            self.children.append(_Child("api", [*base, "api"]))

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_environment(self.settings))
        env.update(worker_threads(self.settings, self.workers))
        env.update(self.extra_env)
        return env

    def _spawn(self, child: _Child) -> None:
        """Start ``child``; it is killed by the kernel if this process dies (:func:`die_with_parent`)."""
        parent = os.getpid()
        _libc()
        out = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_file.open("ab")
        try:
            child.process = subprocess.Popen(
                child.argv,
                env=self._environment(),
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                preexec_fn=lambda: die_with_parent(parent),  # the supervisor runs no other threads
            )
        finally:
            if out is not None:
                out.close()
        child.started = time.monotonic()
        log.info("started", process=child.name, pid=child.process.pid)

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.process is None:
            if now >= child.not_before:
                self._spawn(child)
            return
        code = child.process.poll()
        if code is None:
            if now - child.started > 60:
                child.failures = 0  # stayed up for a minute: healthy again
            return
        child.failures += 1
        pause = min(60.0, 2.0 ** (child.failures - 1))
        log.error("process exited; restarting", process=child.name, code=code, after_seconds=pause)
        child.process = None
        child.not_before = now + pause

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns the exit status (0)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        for child in self.children:
            self._spawn(child)
        try:
            while not self.stopping.wait(0.5):
                for child in self.children:
                    self._check(child)
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM every child (watcher first), wait up to ``shutdown_timeout``, then SIGKILL."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            log.info("stopping", process=child.name, pid=child.process.pid)  # type: ignore[union-attr]
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.settings.queue.shutdown_timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("did not stop in time: killing", process=child.name, pid=child.process.pid)
                child.process.kill()
                child.process.wait()
        log.info("stopped", processes=len(running))
