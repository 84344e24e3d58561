"""The family names a person may type: the shipped list, every registered model's labels, the lab's own list.

A correction typed as "Carbidae" must not become a family of its own in the counts, the plate
legend and the training folder. So every family a person gives is looked up here first
(:func:`labpipe.review.record_verifications` does it):

- **the shipped list** ``labpipe/reports/arthropod_families.csv`` (columns ``family``, ``order``,
  ``class``, ``common_name``, ``note``): several hundred families of insects, arachnids, springtails,
  woodlice, millipedes and centipedes met in bulk samples, plus a few order-level groups that labs
  sort mites into (:data:`ORDER_LEVEL_GROUPS`);
- **the labels of every registered classifier** (``models.labels``): whatever a model can name;
- **the lab's own list**, the CSV file of ``[review] families_file`` (default
  ``<storage root>/families.csv``; a ``family`` column, other columns optional). A name is added to
  it only when a person confirms a new name (:func:`add_lab_family`).

Matching ignores case and spacing and returns the listed spelling:

>>> names = FamilyNames.build(["Carabidae", "Staphylinidae"])
>>> names.canonical(" carabidae "), names.canonical("Carbidae"), names.closest("Carbidae")
('Carabidae', None, ['Carabidae'])
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.db.models import Model, ModelKind
from labpipe.errors import LabpipeError
from labpipe.logs import get_logger

__all__ = [
    "LAB_FILE_HEADER",
    "ORDER_LEVEL_GROUPS",
    "SHIPPED_FILE",
    "FamilyListError",
    "FamilyNames",
    "FamilyRow",
    "accepted_families",
    "add_lab_family",
    "check_new_family_name",
    "closest_families",
    "family_key",
    "match_family",
    "read_lab_families",
    "shipped_families",
]

log = get_logger(__name__)

SHIPPED_FILE = "arthropod_families.csv"
"""The shipped list, a resource of :mod:`labpipe.reports`."""

ORDER_LEVEL_GROUPS = frozenset({"Oribatida", "Astigmatina", "Mesostigmata", "Prostigmata"})
"""Names in the shipped list that are not families (no ``-idae``/``-inae`` ending): the groups
soil-fauna labs sort mites into when they go no further."""

LAB_FILE_HEADER = ("family", "order", "class", "common_name", "note")
"""Columns of a lab list written by labpipe (only ``family`` is required in one written by hand)."""

_NEW_NAME = re.compile(r"[^\W\d_][\w .()'-]*\Z")
_lock = threading.Lock()


class FamilyListError(LabpipeError):
    """The lab's list of families cannot be read or written."""


@dataclass(frozen=True)
class FamilyRow:
    """One row of the shipped list."""

    family: str
    order: str
    class_: str
    common_name: str
    note: str


def family_key(name: str) -> str:
    """What two spellings must share to be the same name: case and spacing ignored.

    >>> family_key("  carabidae "), family_key("Leaf   Beetles")
    ('carabidae', 'leaf beetles')
    """
    return " ".join(str(name).split()).casefold()


def match_family(name: str, accepted: Iterable[str]) -> str | None:
    """The spelling in ``accepted`` of ``name`` (case and spacing ignored), or ``None``; the first
    of several spellings that match wins.

    >>> match_family("CARABIDAE", ["Formicidae", "Carabidae"]), match_family("Carbidae", ["Carabidae"])
    ('Carabidae', None)
    """
    key = family_key(name)
    return next((a for a in accepted if family_key(a) == key), None) if key else None


def closest_families(name: str, accepted: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` names of ``accepted`` that look most like ``name`` (difflib's ratio, case ignored).

    >>> closest_families("Carbidae", ["Carabidae", "Formicidae", "Scarabaeidae"])
    ['Carabidae', 'Scarabaeidae']
    """
    spelling: dict[str, str] = {}
    for a in accepted:
        spelling.setdefault(family_key(a), a)
    keys = difflib.get_close_matches(family_key(name), list(spelling), n=n, cutoff=cutoff)
    return [spelling[k] for k in keys]


@dataclass(frozen=True)
class FamilyNames:
    """A set of accepted names: the listed spelling of each, by :func:`family_key`."""

    by_key: Mapping[str, str]

    @classmethod
    def build(cls, *sources: Iterable[str]) -> FamilyNames:
        """The names of every source; where two spell one name differently, the earlier source wins."""
        by_key: dict[str, str] = {}
        for source in sources:
            for name in source:
                clean = " ".join(str(name).split())
                if clean:
                    by_key.setdefault(family_key(clean), clean)
        return cls(by_key)

    def canonical(self, name: str) -> str | None:
        """The accepted spelling of ``name``, or ``None`` when it is not accepted."""
        return self.by_key.get(family_key(name))

    def closest(self, name: str, n: int = 3) -> list[str]:
        """The accepted names that look most like ``name`` (the fix to suggest for a typo)."""
        return closest_families(name, self.by_key.values(), n=n)

    def names(self) -> list[str]:
        """Every accepted name, sorted (case ignored)."""
        return sorted(self.by_key.values(), key=str.casefold)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and family_key(name) in self.by_key

    def __len__(self) -> int:
        return len(self.by_key)


@cache
def shipped_families() -> tuple[FamilyRow, ...]:
    """The rows of the shipped list (read once)."""
    text = resources.files("labpipe.reports").joinpath(SHIPPED_FILE).read_text(encoding="utf-8")
    return tuple(
        FamilyRow(
            family=row["family"].strip(),
            order=row["order"].strip(),
            class_=row["class"].strip(),
            common_name=(row.get("common_name") or "").strip(),
            note=(row.get("note") or "").strip(),
        )
        for row in csv.DictReader(io.StringIO(text))
        if (row.get("family") or "").strip()
    )


def _parse_lab_file(path: Path, text: str) -> list[str]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    rows = [r for r in rows if not r[0].lstrip().startswith("#")]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "family" not in header:
        raise FamilyListError(
            path,
            "the lab's list of families has no 'family' column",
            "make its first line a header such as: family,order,class,common_name,note",
        )
    column = header.index("family")
    names = (" ".join(r[column].split()) for r in rows[1:] if len(r) > column)
    return [n for n in names if n]


_lab_cache: dict[Path, tuple[tuple[int, int], list[str]]] = {}


def read_lab_families(path: Path | None) -> list[str]:
    """The names of the lab's own list (``[]`` when there is no file); re-read only when it changed."""
    if path is None:
        return []
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FamilyListError(path, f"cannot read the lab's list of families: {exc}") from exc
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _lab_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return list(cached[1])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FamilyListError(
            path, f"cannot read the lab's list of families: {exc}", "save it as UTF-8 CSV"
        ) from exc
    names = _parse_lab_file(path, text)
    _lab_cache[path] = (stamp, names)
    return list(names)


def _model_labels(session: Session) -> Iterator[str]:
    query = select(Model.labels).where(Model.kind == ModelKind.CLASSIFIER.value).order_by(Model.id)
    for labels in session.scalars(query):
        yield from (str(x) for x in (labels or []))


def accepted_families(session: Session, lab_file: Path | None) -> FamilyNames:
    """The names a person may give: the shipped list, then the lab's list, then every registered
    classifier's labels (the earliest spelling of a name wins)."""
    shipped = (row.family for row in shipped_families())
    return FamilyNames.build(shipped, read_lab_families(lab_file), _model_labels(session))


def check_new_family_name(name: str) -> str:
    """``name`` (spacing collapsed) if it can be added as a new name, else :class:`FamilyListError`.

    A new name starts with a capital letter and holds letters, digits, spaces and ``.()'-`` only.

    >>> check_new_family_name(" Carbidae ")
    'Carbidae'
    """
    clean = " ".join(str(name).split())
    if not _NEW_NAME.match(clean):
        raise FamilyListError(
            clean or None,
            "a new family name holds letters, digits, spaces and .()'- only, and starts with a letter",
            "type the name as it should appear in the counts",
        )
    if not clean[0].isupper():
        raise FamilyListError(
            clean, "a family name starts with a capital letter", f"type {clean[0].upper() + clean[1:]}"
        )
    return clean


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Held while the list is rewritten: by this process's threads and, on POSIX, by other processes."""
    with _lock:
        try:
            import fcntl
        except ImportError:  # Windows: one process at a time is all that is guaranteed
            yield
            return
        with (path.parent / f".{path.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def add_lab_family(path: Path, name: str, *, added_by: str | None = None) -> bool:
    """Append ``name`` to the lab's list at ``path`` (created with a header if missing); ``False``
    when it is listed already.

    The file is rewritten whole to a temporary file that is then renamed over it, so a reader never
    sees half a line and a crash never leaves half a file.
    """
    clean = check_new_family_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise FamilyListError(path, f"cannot read the lab's list of families: {exc}") from exc
        if clean in FamilyNames.build(_parse_lab_file(path, text)):
            return False
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not text.strip():
            writer.writerow(LAB_FILE_HEADER)
        elif not text.endswith("\n"):
            out.write("\n")
        writer.writerow([clean] + [""] * (len(LAB_FILE_HEADER) - 1))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text + out.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise FamilyListError(
                path, f"cannot write the lab's list of families: {exc}", "check the folder's permissions"
            ) from exc
    _lab_cache.pop(path, None)
    log.info("family added to the lab's list", family=clean, file=str(path), added_by=added_by or "")
    return True
