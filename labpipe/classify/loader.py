"""The single entry point that turns a configured model spec into a family classifier.

``ClassifierConfig.model`` is either ``builtin:<name>`` (a classifier that ships with labpipe and
needs no model directory) or the path of a trained model directory. Trained directories carry a
``config.json`` whose ``"format"`` names how to load them; formats are registered with
:func:`register_directory_format` (``labpipe-classifier-v1``: :mod:`labpipe.classify.trained`,
written by ``labpipe train classifier``).

``registry:default`` (or ``registry:<version>``) names a model of the registry in the database
(``labpipe models set-default``); :mod:`labpipe.registry` resolves it to a directory or built-in
spec, using ``database_url`` or, without one, the database of the current settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labpipe.classify.base import FamilyClassifier
from labpipe.errors import ModelLoadError

__all__ = [
    "BUILTIN_PREFIX",
    "REGISTRY_PREFIX",
    "builtin_specs",
    "configured_classifier",
    "load_classifier",
    "register_directory_format",
]

BUILTIN_PREFIX = "builtin:"
REGISTRY_PREFIX = "registry:"

DirectoryLoader = Callable[..., FamilyClassifier]
"""``loader(directory, config, *, threshold, batch_size, threads, top_k) -> FamilyClassifier``."""


def _imagenet_efficientnet_lite0(
    *, threshold: float | None, batch_size: int, threads: int, top_k: int
) -> Any:
    from labpipe.classify.imagenet_family import DEFAULT_THRESHOLD, ImageNetFamilyClassifier

    return ImageNetFamilyClassifier(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        batch_size=batch_size,
        threads=threads,
        top_k=top_k,
    )


_BUILTINS: dict[str, Callable[..., FamilyClassifier]] = {
    "imagenet-efficientnet-lite0": _imagenet_efficientnet_lite0,
}
_DIRECTORY_FORMATS: dict[str, DirectoryLoader] = {}


def builtin_specs() -> list[str]:
    """Specs of the built-in classifiers, e.g. ``["builtin:imagenet-efficientnet-lite0"]``."""
    return [BUILTIN_PREFIX + name for name in sorted(_BUILTINS)]


def register_directory_format(format_name: str, loader: DirectoryLoader) -> None:
    """Let :func:`load_classifier` open directories whose ``config.json`` says ``"format": format_name``."""
    _DIRECTORY_FORMATS[format_name] = loader


def _valid_specs_hint() -> str:
    return f"valid: {', '.join(builtin_specs())}, or the path of a trained model directory"


def load_classifier(
    spec: str,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    threads: int = 0,
    top_k: int = 3,
    database_url: str | None = None,
    gate: str = "",
) -> FamilyClassifier:
    """Load the family classifier named by ``spec`` (``ClassifierConfig.model``).

    With ``gate`` (``[classifier] gate``: a directory written by ``labpipe train gate``), the
    classifier, built-in or trained, is put behind the specimen-or-not gate
    (:class:`labpipe.classify.gate.GatedClassifier`): crops it rejects come back rejected as
    ``not_a_specimen``. Empty: no gate.

    Parameters
    ----------
    spec:
        ``builtin:imagenet-efficientnet-lite0``, a model directory path, or ``registry:default`` /
        ``registry:<version>`` (a registered model, looked up in the database at ``database_url``).
    threshold, batch_size, threads, top_k:
        As in ``ClassifierConfig``. ``threshold=None``: a trained directory's own validated
        threshold, 0.5 for the built-in classifier.

    Raises
    ------
    ModelLoadError
        Unknown built-in (the message lists the valid ones), a path that does not exist, a
        directory without a recognised ``config.json``, or weights that fail to load.
    """
    classifier = _load_ungated(spec, threshold, batch_size, threads, top_k, database_url)
    if gate and gate.strip():
        from labpipe.classify.gate import GatedClassifier, load_gate

        return GatedClassifier(classifier, load_gate(gate.strip()))  # type: ignore[return-value]
    return classifier


def _load_ungated(
    spec: str, threshold: float | None, batch_size: int, threads: int, top_k: int, database_url: str | None
) -> FamilyClassifier:
    spec = spec.strip()
    if spec.startswith(REGISTRY_PREFIX):
        from labpipe.registry import resolve_registry_spec

        spec = resolve_registry_spec(spec, database_url)
    options = {"threshold": threshold, "batch_size": batch_size, "threads": threads, "top_k": top_k}
    if spec.startswith(BUILTIN_PREFIX):
        factory = _BUILTINS.get(spec[len(BUILTIN_PREFIX) :])
        if factory is None:
            raise ModelLoadError(spec, "unknown built-in classifier", _valid_specs_hint())
        return factory(**options)
    if not spec:
        raise ModelLoadError(None, "no classifier model configured", _valid_specs_hint())
    directory = Path(spec).expanduser()
    if not directory.exists():
        problem = "neither a built-in classifier nor an existing model directory"
        raise ModelLoadError(spec, problem, _valid_specs_hint())
    config_path = directory / "config.json"
    config: dict[str, Any] = {}
    if directory.is_dir() and config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(config_path, f"unreadable config.json: {exc}") from exc
        if isinstance(loaded, dict):
            config = loaded
    loader = _DIRECTORY_FORMATS.get(str(config.get("format", "")))
    if loader is None:
        raise ModelLoadError(
            spec,
            "not a model directory: no config.json with a known format "
            f"({', '.join(sorted(_DIRECTORY_FORMATS))})",
            f"train one with `labpipe train classifier`, or use {', '.join(builtin_specs())}",
        )
    return loader(directory, config, **options)


def _labpipe_classifier_v1(directory: Path, config: dict[str, Any], **options: Any) -> FamilyClassifier:
    from labpipe.classify.trained import load_trained_classifier

    return load_trained_classifier(directory, config, **options)


register_directory_format("labpipe-classifier-v1", _labpipe_classifier_v1)


def configured_classifier(
    settings: Any, *, model: str | None = None, threshold: float | None = None, gate: str | None = None
) -> FamilyClassifier:
    """The classifier of ``settings`` (``[classifier]``), or ``model`` with the same batch size,
    threads, top-k and gate; ``threshold`` overrides ``[classifier] threshold``, ``gate``
    ``[classifier] gate`` (``""``: none)."""
    cfg = settings.classifier
    return load_classifier(
        cfg.model if model is None else model,
        threshold=cfg.threshold if threshold is None else threshold,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        top_k=cfg.top_k,
        database_url=settings.database_url,
        gate=(getattr(cfg, "gate", "") or "") if gate is None else gate,
    )
