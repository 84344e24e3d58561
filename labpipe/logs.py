"""Structured logs: every line says which image (and specimen) it concerns.

``get_logger(__name__).bind(image="plate.tif").info("detected", specimens=12)`` prints
``2026-11-22T12:00:00Z INFO labpipe.pipeline detected image=plate.tif specimens=12`` in text
format, or one JSON object per line with ``format = "json"``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["BoundLogger", "configure_logging", "get_logger"]

_FIELDS_ATTR = "labpipe_fields"


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text)
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        fields = getattr(record, _FIELDS_ATTR, {})
        parts = [stamp, record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class BoundLogger:
    """A logger carrying context fields; methods take extra fields as keyword arguments."""

    def __init__(self, logger: logging.Logger, fields: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._fields = fields or {}

    def bind(self, **fields: Any) -> BoundLogger:
        return BoundLogger(self._logger, {**self._fields, **fields})

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            merged = {**self._fields, **fields}
            self._logger.log(level, event, exc_info=exc_info, extra={_FIELDS_ATTR: merged}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> BoundLogger:
    return BoundLogger(logging.getLogger(name))


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send labpipe's logs to stderr in ``text`` or ``json`` format (idempotent)."""
    if fmt not in {"text", "json"}:
        raise ValueError(f"log format must be 'text' or 'json', given {fmt!r}")
    root = logging.getLogger("labpipe")
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_labpipe", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler._labpipe = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
