"""How far a processing plate has got, read from its stage directory on the shared storage.

The daemon's detect task writes ``<crops>/<STAGE_DIR_PREFIX><image id>-.../manifest.json`` when it
has found the specimens, and each classify batch adds a ``classified-*.json`` beside it; the
dashboard and the plate view read those files (no database, no broker).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labpipe.pipeline import STAGE_DIR_PREFIX

__all__ = ["plate_progress"]


def plate_progress(crops_dir: Path, image_id: int) -> dict[str, Any] | None:
    """How far a processing image has got, from its stage directory on the shared storage.

    Returns ``{"stage": "detecting"}`` while the detect task runs (no manifest yet), then
    ``{"stage": "classifying", "specimens": n, "batches": b, "batches_done": k}``; ``None`` when
    there is no stage directory (processed by ``labpipe process``, or not started).
    """
    prefix = f"{STAGE_DIR_PREFIX}{image_id:06d}-"
    try:
        dirs = [p for p in crops_dir.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return None
    if not dirs:
        return None
    newest = max(dirs, key=lambda p: p.stat().st_mtime)
    manifest = newest / "manifest.json"
    if not manifest.is_file():
        return {"stage": "detecting"}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"stage": "detecting"}
    n = len(data.get("specimens", []))
    per_batch = max(1, int(data.get("per_batch") or 1))
    batches = -(-n // per_batch)
    done = len(list(newest.glob("classified-*.json")))
    return {"stage": "classifying", "specimens": n, "batches": batches, "batches_done": min(done, batches)}
