"""Errors that name the file, what was wrong, and what to do about it."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "ImageReadError",
    "ImageTooLargeError",
    "LabpipeError",
    "ModelLoadError",
]


class LabpipeError(Exception):
    """Base class: every labpipe error carries the object concerned, the problem and a hint."""

    def __init__(self, subject: str | Path | None, problem: str, hint: str = "") -> None:
        self.subject = str(subject) if subject is not None else None
        self.problem = problem
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.subject}: " if self.subject else ""
        what_to_do = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.problem}{what_to_do}"

    @property
    def reason_code(self) -> str:
        """Short machine-readable reason, stored with quarantined images."""
        return type(self).__name__


class ConfigError(LabpipeError):
    """A configuration file, environment variable or flag is invalid."""


class ImageReadError(LabpipeError):
    """An image cannot be read: missing, not an image, truncated, corrupt or of an unsupported kind.

    Bad input is never retried: the daemon quarantines the file with this message.
    """


class ImageTooLargeError(ImageReadError):
    """An image's header declares more pixels than labpipe is configured to accept."""


class ModelLoadError(LabpipeError):
    """A model directory or built-in model cannot be loaded."""
