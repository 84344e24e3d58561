"""Peak resident memory of a command, measured so that the caller's own memory does not count.

``ru_maxrss`` survives ``exec``: a child forked from a process that holds 1 GB starts with a peak
of 1 GB, whatever it does after. A benchmark (or a test) that made a large image a moment before,
or imported torch, would report its own size as the child's peak. :func:`run_measured` therefore
starts a small launcher (a fresh interpreter with nothing imported), which starts the command
and reads that grandchild's own peak with ``os.wait4``; the grandchild is forked from the small
launcher, so its figure is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MeasuredRun", "child_environment", "run_measured"]

_LAUNCHER = """
import json, os, subprocess, sys
with open(sys.argv[2], "wb") as out, open(sys.argv[3], "wb") as err:
    proc = subprocess.Popen(sys.argv[4:], stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, fh)
"""


@dataclass(frozen=True)
class MeasuredRun:
    """How a measured command ended and its peak resident memory."""

    exit_code: int
    peak_bytes: int
    stdout: bytes
    stderr: bytes

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def run_measured(
    cmd: Sequence[str], *, work: Path, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> MeasuredRun:
    """Run ``cmd`` through the launcher (module docstring); output goes through files in ``work``.

    Linux reports ``ru_maxrss`` in kilobytes (macOS in bytes; the launcher is meant for Linux).
    """
    work.mkdir(parents=True, exist_ok=True)
    result, out, err = work / "measured.json", work / "measured.stdout", work / "measured.stderr"
    result.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), str(out), str(err), *cmd]
    subprocess.run(launcher, env=dict(env) if env is not None else None, timeout=timeout, check=True)
    record = json.loads(result.read_text())
    scale = 1 if sys.platform == "darwin" else 1024
    return MeasuredRun(
        exit_code=int(record["exit"]),
        peak_bytes=int(record["maxrss_kb"]) * scale,
        stdout=out.read_bytes(),
        stderr=err.read_bytes(),
    )


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``LABPIPE_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABPIPE_")}
    env.update(extra or {})
    return env
