"""Moving originals out of the inbox: to the archive after success, to quarantine with a reason file.

Originals are never deleted or rewritten: a move is a rename on the same file system, and across
file systems a copy to a temporary name in the destination folder, an atomic rename, and only then
the removal of the source. An existing file at the destination is never overwritten: a different
file with the same name keeps its name with the first 12 hex digits of its content hash added
(``plate01.tif`` -> ``plate01.3fa9c2b07d1e.tif``). The folder structure below the inbox is kept
(``inbox/LL-17/plate01.tif`` -> ``archive/LL-17/plate01.tif``). A sidecar (``plate01.json``)
travels with its image.

Only files the daemon received are ever moved: a regular file whose real path (symbolic links and
``..`` resolved) lies inside the inbox (:func:`inside_inbox`). A file processed from anywhere else
(``labpipe process /some/folder/plate.tif``), or a symbolic link in the inbox, stays where it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
from pathlib import Path

from labpipe.errors import LabpipeError
from labpipe.ingest.rules import sidecar_path

__all__ = [
    "NotInInboxError",
    "destination_for",
    "inside_inbox",
    "link_in_inbox",
    "move_file",
    "move_link",
    "move_original",
    "reason_file_for",
    "write_reason_file",
]

_TMP_PREFIX = ".labpipe-moving-"


class NotInInboxError(LabpipeError):
    """A move was asked for a file that the daemon did not receive in its inbox: refused."""


def inside_inbox(source: Path, inbox: Path) -> bool:
    """Whether ``source`` is the daemon's to move: a regular file, not a symbolic link, whose real
    path (links in its folders and ``..`` resolved) lies inside the real path of ``inbox``.

    >>> inside_inbox(Path("/etc/passwd"), Path("/tmp"))
    False
    """
    try:
        if source.is_symlink() or not source.is_file():
            return False
        return source.resolve(strict=True).is_relative_to(inbox.resolve())
    except (OSError, RuntimeError):  # unreadable folder, a loop of links
        return False


def link_in_inbox(path: Path, inbox: Path) -> bool:
    """Whether ``path`` is a symbolic link whose own entry lies in the inbox (its folder's real path
    is inside the inbox's), wherever the link points. Such a link was received in the inbox; the
    file it points to was not.

    >>> link_in_inbox(Path("/etc/passwd"), Path("/etc"))
    False
    """
    try:
        return path.is_symlink() and path.parent.resolve(strict=True).is_relative_to(inbox.resolve())
    except (OSError, RuntimeError):
        return False


def _relative(source: Path, inbox: Path) -> Path:
    """``source``'s path below ``inbox`` (real paths when both resolve), else its bare name."""
    for src, root in ((source, inbox), (source.resolve(), inbox.resolve())):
        try:
            relative = src.relative_to(root)
        except ValueError:
            continue
        if ".." not in relative.parts:
            return relative
    return Path(source.name)


def _split_name(name: str) -> tuple[str, str]:
    """``plate.ome.tif`` -> (``plate``, ``.ome.tif``); ``plate.tif`` -> (``plate``, ``.tif``)."""
    lowered = name.lower()
    for double in (".ome.tif", ".ome.tiff", ".ome.btf"):
        if lowered.endswith(double):
            return name[: -len(double)], name[-len(double) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


def destination_for(source: Path, inbox: Path, dest_root: Path, content_hash: str) -> Path:
    """Where ``source`` goes below ``dest_root``: same relative path, never an existing file.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> destination_for(Path("/in/S1/p.tif"), Path("/in"), root, "ab" * 32).relative_to(root)
    PosixPath('S1/p.tif')
    """
    target = dest_root / _relative(source, inbox)
    if not target.exists() and not target.is_symlink():
        return target
    stem, suffix = _split_name(target.name)
    tag = content_hash[:12] or "copy"
    candidate = target.with_name(f"{stem}.{tag}{suffix}")
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = target.with_name(f"{stem}.{tag}-{n}{suffix}")
        n += 1
    return candidate


def move_file(source: Path, target: Path) -> None:
    """Move one file without ever overwriting ``target`` or leaving a half-copied file under its name.

    Raises ``FileExistsError`` when ``target`` exists (or appears meanwhile). Does not check whose
    file ``source`` is: callers move only files of labpipe's own folders (see :func:`move_original`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Fails if target exists: no silent overwrite. A link that appeared at ``source`` since it
        # was checked is moved as a link: its target is never touched.
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}")
        try:
            shutil.copy2(source, tmp, follow_symlinks=False)
            if target.exists():
                raise FileExistsError(errno.EEXIST, "target appeared while copying", str(target)) from exc
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    source.unlink()


def move_original(source: Path, inbox: Path, dest_root: Path, content_hash: str) -> Path:
    """Move ``source`` (and its sidecar, if any) below ``dest_root``; returns the new path.

    Raises :class:`NotInInboxError` when ``source`` is not a regular file inside ``inbox`` (see
    :func:`inside_inbox`): nothing is moved. Raises ``FileNotFoundError`` when ``source`` is gone.
    Retries with a new name if another process took the chosen one at the same moment.
    """
    if not source.exists() and not source.is_symlink():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(source))
    if not inside_inbox(source, inbox):
        raise NotInInboxError(
            source,
            f"not a file received in the inbox {inbox} (outside it, or a symbolic link): not moved",
            "labpipe moves only files dropped into its inbox; this one stays where it is",
        )
    for _ in range(5):
        target = destination_for(source, inbox, dest_root, content_hash)
        try:
            move_file(source, target)
        except FileExistsError:
            continue
        side = sidecar_path(source)
        if side != source and inside_inbox(side, inbox):
            side_target = target.with_name(_split_name(target.name)[0] + ".json")
            if not side_target.exists():
                with contextlib.suppress(OSError):  # the image is safe; the sidecar stays behind
                    move_file(side, side_target)
        return target
    raise FileExistsError(errno.EEXIST, "no free name below the destination", str(dest_root))


def move_link(link: Path, inbox: Path, dest_root: Path, tag: str) -> Path:
    """Move the symbolic link ``link`` itself (never the file it points to) below ``dest_root``.

    Raises :class:`NotInInboxError` unless ``link`` is a link received in the inbox
    (:func:`link_in_inbox`). The link keeps pointing where it pointed; its target is not read,
    moved or changed.
    """
    if not link_in_inbox(link, inbox):
        raise NotInInboxError(
            link,
            f"not a symbolic link received in the inbox {inbox}: not moved",
            "labpipe moves only what was dropped into its inbox",
        )
    for _ in range(5):
        target = destination_for(link, inbox, dest_root, tag)
        try:
            move_file(link, target)  # moves the link as a link (follow_symlinks=False)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(errno.EEXIST, "no free name below the destination", str(dest_root))


def reason_file_for(moved: Path) -> Path:
    """``quarantine/plate.tif`` -> ``quarantine/plate.tif.reason.txt``."""
    return moved.with_name(moved.name + ".reason.txt")


def write_reason_file(
    moved: Path,
    *,
    status: str,
    reason_code: str,
    message: str,
    image_id: int | None,
    content_hash: str | None,
    original: Path,
) -> Path:
    """Write ``<name>.reason.txt`` beside a quarantined file: what was wrong and what to do."""
    text = "\n".join(
        [
            f"file: {moved.name}",
            f"from: {original}",
            f"status: {status}",
            f"reason: {reason_code}",
            f"message: {message}",
            f"image id: {image_id if image_id is not None else '-'}",
            f"content sha256: {content_hash or '-'}",
            f"time: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "what to do: repair or re-export the file and drop it into the inbox again; "
            "it is then processed as a new attempt.",
            "",
        ]
    )
    path = reason_file_for(moved)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
