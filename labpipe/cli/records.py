"""``labpipe samples``, ``counts``, ``export``, ``plates``, ``barcodes`` and ``api``: the records side.

Thin click commands over :mod:`labpipe.samples`, :mod:`labpipe.reports` and
:mod:`labpipe.barcoding`. They are registered on the main group in :mod:`labpipe.cli.main`; the
settings come through ``click.pass_obj`` (the main group's context object, which has
``.settings``), so this module does not import the main module.

Exit status: 0 done; 1 the input had problems (nothing was written, or some rows were skipped and
``--skip-bad`` was not given); 2 an error (configuration, missing file, unknown id).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.orm import Session

from labpipe.errors import LabpipeError
from labpipe.reports.cells import SafeDictWriter

__all__ = ["api", "barcodes", "counts", "export", "plates", "samples"]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(exc: LabpipeError | str, code: int = 2) -> None:
    click.echo(f"error: {exc.message if isinstance(exc, LabpipeError) else exc}", err=True)
    sys.exit(code)


@contextmanager
def _session(obj: Any) -> Iterator[Session]:
    """A database session for the command; a labpipe error ends the command with its message."""
    from labpipe.db.database import open_database

    try:
        factory = open_database(obj.settings.database_url)
    except LabpipeError as exc:
        _fail(exc)
        raise  # unreachable: _fail exits
    try:
        with factory() as session:
            yield session
    except LabpipeError as exc:
        _fail(exc)
    finally:
        bind = factory.kw.get("bind")
        if bind is not None:
            bind.dispose()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _write_text(out: Path | None, text: str) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)


# --------------------------------------------------------------------------------------------------
# samples


@click.group()
def samples() -> None:
    """Bulk samples: import their metadata from CSV, list them, inspect one."""


@samples.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-bad", is_flag=True, help="Import the good rows and report the bad ones.")
@click.option("--dry-run", is_flag=True, help="Validate and report; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def samples_import(obj: Any, csv_file: Path, skip_bad: bool, dry_run: bool, as_json: bool) -> None:
    """Import samples from CSV_FILE (sample id, site, habitat, latitude, longitude, collection date,
    collector, method, fraction, notes).

    Every row is validated first; errors name the row and the column. Nothing is imported when
    any row is wrong, unless --skip-bad. Existing samples (for example those created when their
    images arrived) are updated.
    """
    from labpipe.samples import SampleImportError, import_samples, read_samples_file

    with _session(obj) as session:
        try:
            report = import_samples(
                session, read_samples_file(csv_file), str(csv_file), skip_bad=skip_bad, dry_run=dry_run
            )
        except SampleImportError as exc:
            session.rollback()
            if as_json:
                _echo_json({"error": exc.problem, "errors": [e.as_dict() for e in exc.errors]})
            _fail(exc, 1 if exc.errors else 2)
            return
        if not dry_run:
            session.commit()
    if as_json:
        _echo_json(report.as_dict())
    else:
        verb = "would import" if dry_run else "imported"
        click.echo(
            f"{csv_file}: {verb} {len(report.created)} new, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged"
        )
        for error in report.skipped:
            click.echo(f"skipped: {error.message}", err=True)


@samples.command("list")
@click.option("--site", help="Only samples of this site.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def samples_list(obj: Any, site: str | None, as_json: bool) -> None:
    """List samples with their number of images and specimens."""
    from labpipe.samples import list_samples

    with _session(obj) as session:
        rows = list_samples(session, site=site)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no samples yet (import them with `labpipe samples import FILE`)")
        return
    click.echo(f"{'sample':<20}{'date':<12}{'site':<24}{'images':>7}{'specimens':>10}")
    for r in rows:
        click.echo(
            f"{r['sample_id']:<20}{r['collection_date'] or '-':<12}{(r['site'] or '-')[:23]:<24}"
            f"{r['images']:>7}{r['specimens']:>10}"
        )


@samples.command("show")
@click.argument("sample_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def samples_show(obj: Any, sample_id: str, as_json: bool) -> None:
    """Show one sample: its metadata, its images (with status) and its family counts."""
    from labpipe.reports.counts import counts_to_table
    from labpipe.samples import SAMPLE_FIELDS, sample_detail

    with _session(obj) as session:
        detail = sample_detail(session, sample_id)
    if as_json:
        _echo_json(detail)
        return
    for key in SAMPLE_FIELDS:
        click.echo(f"{key:<16}{detail[key] if detail[key] is not None else '-'}")
    click.echo(f"\nimages ({len(detail['images'])}):")
    for image in detail["images"]:
        extra = f"  {image['error']}" if image["error"] else ""
        n = image["n_specimens"] if image["n_specimens"] is not None else "-"
        click.echo(
            f"  {image['image_id']:>6}  {image['status']:<12}{n!s:>6} specimens  {image['file_name']}{extra}"
        )
    if detail["counts"]:
        click.echo("\n" + counts_to_table([detail["counts"]]))


@samples.command("images")
@click.option("--sample", "sample_id", help="Only this sample's images.")
@click.option("--unassigned", is_flag=True, help="Only images that belong to no sample.")
@click.option(
    "--status",
    "image_status",
    type=click.Choice(["queued", "processing", "done", "failed", "quarantined"]),
    help="Only images in this state.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def samples_images(
    obj: Any, sample_id: str | None, unassigned: bool, image_status: str | None, as_json: bool
) -> None:
    """List plate images with their sample, status and number of specimens."""
    from labpipe.queries.listings import ImageFilter, image_page
    from labpipe.samples import image_dict

    flt = ImageFilter(status=image_status, sample=sample_id, unassigned=unassigned, newest_first=False)
    with _session(obj) as session:
        _, images = image_page(session, flt, count=False)
        rows = [image_dict(i) for i in images]
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        n = r["n_specimens"] if r["n_specimens"] is not None else "-"
        error = f"  {r['error']}" if r["error"] else ""
        click.echo(
            f"{r['image_id']:>6}  {r['sample_id'] or '-':<20}{r['status']:<12}{n!s:>6} specimens  "
            f"{r['file_name']}{error}"
        )


# --------------------------------------------------------------------------------------------------
# counts and exports


def _filters(func: F) -> F:
    """The filter options shared by ``counts`` and ``export``."""
    options = [
        click.option("--sample", "sample_ids", multiple=True, help="Only this sample (repeatable)."),
        click.option("--site", help="Only samples of this site."),
        click.option("--from", "date_from", type=click.DateTime(["%Y-%m-%d"]), help="Collected on or after."),
        click.option("--to", "date_to", type=click.DateTime(["%Y-%m-%d"]), help="Collected on or before."),
        click.option(
            "--model", "model_version", help="Classifier version (or unique prefix); default: latest."
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(0.0, 1.0),
            help="Acceptance threshold chosen now (default: each classification's stored decision).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _count_filter(session: Session, kw: dict[str, Any]) -> Any:
    from labpipe.queries.calls import CountFilter
    from labpipe.registry import find_model

    model = kw.get("model_version")
    version = find_model(session, model).version if model else None
    as_date = lambda d: d.date() if isinstance(d, dt.datetime) else d  # noqa: E731
    return CountFilter(
        samples=tuple(kw.get("sample_ids") or ()),
        site=kw.get("site"),
        date_from=as_date(kw.get("date_from")),
        date_to=as_date(kw.get("date_to")),
        model_version=version,
    )


def _count_table(obj: Any, kw: dict[str, Any], corrected: bool = False) -> list[dict[str, Any]]:
    from labpipe.reports.counts import compute_counts

    with _session(obj) as session:
        flt = _count_filter(session, kw)
        rows = compute_counts(session, flt, threshold=kw.get("threshold"), corrected=corrected)
        return [c.as_dict() for c in rows]


@click.command()
@_filters
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "matrix"]),
    help="table (default), csv (long: sample,family,count), json, or matrix (samples x families).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--csv", "as_csv", is_flag=True, help="Same as --format csv.")
@click.option("--matrix", "as_matrix", is_flag=True, help="Same as --format matrix.")
@click.option(
    "--expected", is_flag=True, help="CSV: add expected counts and 95% intervals; matrix: use them."
)
@click.option(
    "--corrected",
    is_flag=True,
    help="Table, JSON, CSV: add counts corrected for the model's validated errors (its confusion "
    "matrix and unknown-family acceptance) with 95% intervals, or say why there are none.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@click.pass_obj
def counts(
    obj: Any,
    fmt: str | None,
    as_json: bool,
    as_csv: bool,
    as_matrix: bool,
    expected: bool,
    corrected: bool,
    out: Path | None,
    **kw: Any,
) -> None:
    """Per-sample family counts from the database.

    A specimen counts for a family when a person verified it as that family, or when the
    classifier's probability reaches the threshold (--threshold, chosen now; default: the decision
    stored with each classification). Rejected specimens are counted apart; specimens verified as
    'not a specimen' are excluded. Expected counts are sums of calibrated probabilities, with 95%
    intervals. The matrix (first column 'sample') reads straight into R (vegan) and pandas.

    --corrected estimates each family's true count from the predicted counts with the model's
    validated confusion matrix and the share of unknown families it accepts (recorded by `labpipe
    train classifier`), with 95% intervals; verified specimens are added back as known. A built-in
    model, a sample of mixed models or a --threshold other than the model's gets no corrected
    count, and the output says why.
    """
    from labpipe.reports.counts import counts_to_csv, counts_to_table, matrix_to_csv

    chosen = [f for f, flag in (("json", as_json), ("csv", as_csv), ("matrix", as_matrix)) if flag]
    if fmt:
        chosen.append(fmt)
    if len(set(chosen)) > 1:
        raise click.UsageError("choose one output format")
    fmt = chosen[0] if chosen else "table"
    if corrected and fmt == "matrix":
        raise click.UsageError("--corrected applies to the table, JSON and CSV, not to the matrix")
    table = _count_table(obj, kw, corrected=corrected)
    if fmt == "json":
        _write_text(out, json.dumps(table, indent=2) + "\n")
    elif fmt == "csv":
        _write_text(out, counts_to_csv(table, expected=expected, corrected=corrected))
    elif fmt == "matrix":
        _write_text(out, matrix_to_csv(table, "expected" if expected else "count"))
    else:
        _write_text(out, counts_to_table(table) + "\n")


@click.group()
def export() -> None:
    """Write exports: Darwin Core Archive (GBIF), BOLD submission, counts CSV, community matrix."""


@export.command("dwca")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_filters
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def export_dwca_command(obj: Any, out: Path, as_json: bool, **kw: Any) -> None:
    """Write a Darwin Core Archive (zip) to OUT: sample events, family occurrences with counts,
    meta.xml and eml.xml (dataset metadata from [dwca] in the configuration).

    The archive names the classifier versions behind the counts, and each event says how many of
    its specimens are in no occurrence (rejected by the classifier, not classified yet, excluded).
    A warning names each of rights holder, licence and contact still unset in [dwca].
    """
    from labpipe.reports.dwca import export_dwca

    with _session(obj) as session:
        flt = _count_filter(session, kw)
        result = export_dwca(session, out, obj.settings.dwca, flt, kw.get("threshold"))
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _echo_json(result)
        return
    click.echo(
        f"wrote {out}: {result['events']} events, {result['occurrences']} occurrences, "
        f"{result['individuals']} individuals"
    )
    click.echo(
        f"not in any occurrence: {result['rejected_specimens']} rejected, "
        f"{result['unclassified_specimens']} not classified yet, {result['excluded_specimens']} excluded "
        "(per sample in each event's eventRemarks)"
    )
    click.echo(f"classifier version(s): {', '.join(result['model_versions']) or 'none'}")


@export.command("coco")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sample", "sample_id", help="Only this sample's plates.")
@click.option(
    "--reviewed-only",
    is_flag=True,
    help="Only plates marked boxes reviewed (default: also plates on which every box has a verdict).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the file names are relative to (default: the archive folder); pass it as --images.",
)
@click.pass_obj
def export_coco(obj: Any, out: Path, sample_id: str | None, reviewed_only: bool, root: Path | None) -> None:
    """Write the reviewed plates to OUT as a COCO detection file: detector training data.

    Boxes a person checked are category 'specimen' (the family as attributes.family), boxes judged
    'not a specimen' are 'debris' (negatives), a 'multiple' box is a specimen with
    attributes.multiple. Each image has its file (relative to --root), size, scale (um_per_px), sample
    and who marked it reviewed. Train on it with `labpipe train detector --coco OUT --images ROOT`.
    """
    from labpipe.detect.detr_data import write_coco_document
    from labpipe.reports.coco import coco_export

    folder = (root or obj.settings.storage.archive_dir).resolve()
    with _session(obj) as session:
        doc = coco_export(session, folder, sample=sample_id, reviewed_only=reviewed_only)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_coco_document(doc, out)
    info = doc["info"]
    click.echo(
        f"wrote {out}: {len(doc['images'])} plates, {info['boxes']} specimen boxes, "
        f"{info['negatives']} negatives (debris); file names relative to {folder}"
    )


# --------------------------------------------------------------------------------------------------
# images


@click.group()
def images() -> None:
    """Plate images: mark a plate's boxes reviewed."""


@images.command("mark-reviewed")
@click.argument("image_id", type=click.IntRange(1, 2**31 - 1))
@click.option("--by", "by", help="Your name for the audit trail (default: your user name).")
@click.option("--undo", "unmark", is_flag=True, help="Take the mark off instead.")
@click.option("--note", help="A note for the audit trail.")
@click.pass_obj
def images_mark_reviewed(obj: Any, image_id: int, by: str | None, unmark: bool, note: str | None) -> None:
    """Mark plate IMAGE_ID's boxes reviewed: every specimen on it checked, none missing.

    Its boxes then go into `labpipe export coco`. The change is recorded in the audit trail.
    """
    import getpass

    from labpipe.audit import mark_boxes_reviewed

    who = by or getpass.getuser()
    with _session(obj) as session:
        event = mark_boxes_reviewed(session, image_id, by=who, reviewed=not unmark, note=note)
        session.commit()
        event_id = event.id
    done = "boxes-reviewed mark taken off" if unmark else "marked boxes reviewed"
    click.echo(f"image {image_id}: {done} by {who} (audit event {event_id})")


@export.command("csv")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_filters
@click.option("--expected", is_flag=True, help="Add expected counts and 95% intervals.")
@click.pass_obj
def export_csv(obj: Any, out: Path, expected: bool, **kw: Any) -> None:
    """Write the counts as long CSV (sample, family, count[, expected, low, high]) to OUT."""
    from labpipe.reports.counts import counts_to_csv

    _write_text(out, counts_to_csv(_count_table(obj, kw), expected=expected))


@export.command("matrix")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_filters
@click.option("--expected", is_flag=True, help="Expected counts instead of accepted counts.")
@click.pass_obj
def export_matrix(obj: Any, out: Path, expected: bool, **kw: Any) -> None:
    """Write the community matrix (samples as rows, families as columns) as CSV to OUT."""
    from labpipe.reports.counts import matrix_to_csv

    _write_text(out, matrix_to_csv(_count_table(obj, kw), "expected" if expected else "count"))


@export.command("bold")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--plate", "plate_names", multiple=True, help="Specimens on this plate (repeatable).")
@click.option("--sample", "sample_id", help="Specimens of this sample that are on plates.")
@click.option(
    "--all", "all_specimens", is_flag=True, help="With --sample: every specimen, on a plate or not."
)
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Acceptance threshold for the family.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def export_bold(
    obj: Any,
    out_dir: Path,
    plate_names: tuple[str, ...],
    sample_id: str | None,
    all_specimens: bool,
    threshold: float | None,
    as_json: bool,
) -> None:
    """Write a BOLD submission into OUT_DIR: bold_specimens.xlsx (Lab Sheet, Taxonomy, Specimen
    Details, Collection Data), bold_images.xlsx and images/ with each specimen's crop.

    Without --all only specimens laid out on plates are submitted; a sample with none on a plate is
    refused (exit status 2), as in the web UI and the API. Institution, licence, identifier and
    photographer come from [bold] in the configuration.
    """
    from labpipe.barcoding.bold import bold_submission_items, write_bold_submission

    settings = obj.settings
    with _session(obj) as session:
        items = bold_submission_items(
            session,
            pattern=settings.bold.sample_id_pattern,
            plates=plate_names,
            sample=sample_id,
            all_specimens=all_specimens,
            threshold=threshold,
        )
        result = write_bold_submission(items, out_dir, settings.storage.crops_dir, settings.bold)
    if as_json:
        _echo_json(result)
        return
    click.echo(
        f"wrote {result['specimens_xlsx']} and {result['images_xlsx']}: {result['specimens']} specimens"
    )
    if result["missing_crops"]:
        click.echo(f"warning: no crop file for {', '.join(result['missing_crops'])}", err=True)


# --------------------------------------------------------------------------------------------------
# plates


@click.group()
def plates() -> None:
    """96-well plates for DNA barcoding: lay specimens out, list plates, write manifests again."""


def _write_plate_files(obj: Any, session: Session, plate_names: list[str], out_dir: Path) -> list[str]:
    from labpipe.barcoding.plates import manifest_csv, plate_manifest, plate_sheet

    cfg = obj.settings.plates
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for plate in plate_names:
        rows = plate_manifest(session, [plate], controls=cfg.controls, order=cfg.order)
        csv_path = out_dir / f"{plate}.manifest.csv"
        html_path = out_dir / f"{plate}.picking.html"
        csv_path.write_text(manifest_csv(rows), encoding="utf-8")
        sheet = plate_sheet(
            session,
            [plate],
            obj.settings.storage.crops_dir,
            controls=cfg.controls,
            order=cfg.order,
            thumbnail_px=cfg.thumbnail_px,
        )
        html_path.write_text(sheet, encoding="utf-8")
        written += [str(csv_path), str(html_path)]
    return written


@plates.command("layout")
@click.option("--sample", "sample_id", required=True, help="The sample whose specimens are laid out.")
@click.option("--family", help="Only specimens counted as this family.")
@click.option(
    "--include-rejected/--leave-out-rejected",
    default=False,
    show_default=True,
    help="Specimens the classifier rejected (unsure, or no family it knows): lay them out too, or leave "
    "them out; the report and the picking sheet say how many were included or left out.",
)
@click.option("--order", type=click.Choice(["column", "row"]), help="Fill order (default: [plates] order).")
@click.option("--controls", help="Control wells left empty, e.g. 'G12,H12' ('' for none; default: config).")
@click.option("--prefix", help="Plate name prefix (default: [plates] prefix, else '<sample>-P').")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Acceptance threshold chosen now.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("plates"),
    show_default=True,
    help="Folder for the manifests and picking sheets.",
)
@click.option("--dry-run", is_flag=True, help="Show the layout; record and write nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plates_layout(
    obj: Any,
    sample_id: str,
    family: str | None,
    include_rejected: bool,
    order: str | None,
    controls: str | None,
    prefix: str | None,
    threshold: float | None,
    out_dir: Path,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Assign the specimens of a sample to 96-well plates (A1..H12, column by column by default,
    control wells left empty) and write, per plate, a CSV manifest and a printable picking sheet
    (HTML with each well's crop thumbnail and Sample ID; print it or save it as PDF).

    The wells are recorded, so BOLD results link back by Sample ID; specimens already on a plate
    are not laid out again. Rejected specimens are left out unless --include-rejected; either way
    the report and the picking sheet say how many.
    """
    from labpipe.barcoding.plates import layout_plates

    cfg = obj.settings.plates
    try:
        with _session(obj) as session:
            result = layout_plates(
                session,
                sample_id,
                pattern=obj.settings.bold.sample_id_pattern,
                family=family,
                include_rejected=include_rejected,
                order=order or cfg.order,
                controls=cfg.controls if controls is None else controls,
                prefix=cfg.prefix if prefix is None else prefix,
                threshold=threshold,
                dry_run=dry_run,
            )
            written: list[str] = []
            if not dry_run:
                session.commit()
                written = _write_plate_files(obj, session, result.plates, out_dir)
    except ValueError as exc:
        _fail(str(exc))
        return
    if as_json:
        _echo_json({**result.as_dict(), "files": written})
        return
    verb = "would place" if dry_run else "placed"
    click.echo(f"sample {sample_id}: {verb} {len(result.placed)} specimens on {len(result.plates)} plate(s)")
    for plate in result.plates:
        n = sum(1 for r in result.placed if r.plate == plate)
        click.echo(f"  {plate}: {n} wells")
    click.echo(f"  {result.rejected_text()}")
    if result.already_on_plates:
        click.echo(f"  {len(result.already_on_plates)} specimens were already on plates (left as they are)")
    for path in written:
        click.echo(f"wrote {path}")


@plates.command("list")
@click.option("--sample", "sample_id", help="Only plates holding this sample's specimens.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plates_list(obj: Any, sample_id: str | None, as_json: bool) -> None:
    """List plates with their number of wells and barcode results."""
    from labpipe.barcoding.plates import list_plates

    with _session(obj) as session:
        rows = list_plates(session, sample_id)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no plates yet (lay specimens out with `labpipe plates layout --sample S`)")
    for r in rows:
        click.echo(
            f"{r['plate']:<20}{r['wells']:>4} wells  {r['processed']:>3} with processid  "
            f"{r['dna_family']:>3} with DNA family  samples: {', '.join(r['samples']) or '-'}"
        )


@plates.command("sheet")
@click.argument("plate_names", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("plates"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
@click.pass_obj
def plates_sheet(obj: Any, plate_names: tuple[str, ...], out_dir: Path, as_json: bool) -> None:
    """Write the manifest and picking sheet of recorded PLATE_NAMES again."""
    with _session(obj) as session:
        written = _write_plate_files(obj, session, list(plate_names), out_dir)
    if as_json:
        _echo_json({"files": written})
        return
    for path in written:
        click.echo(f"wrote {path}")


# --------------------------------------------------------------------------------------------------
# barcodes


@click.group()
def barcodes() -> None:
    """BOLD results: import them, compare DNA-based with image-based families."""


@barcodes.command("import")
@click.argument("tsv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--marker", default="COI-5P", show_default=True, help="Only rows of this marker (when the file has one)."
)
@click.option("--dry-run", is_flag=True, help="Match and report; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def barcodes_import(obj: Any, tsv_file: Path, marker: str, dry_run: bool, as_json: bool) -> None:
    """Import a BOLD results table (TSV) and link each row to its specimen by Sample ID.

    Unknown and duplicate Sample IDs are reported, never guessed. Exit status 1 when any row
    could not be linked.
    """
    from labpipe.barcoding.import_results import import_barcodes

    try:
        text = tsv_file.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        _fail(f"{tsv_file}: cannot read ({exc.strerror})")
        return
    with _session(obj) as session:
        report = import_barcodes(
            session,
            text,
            str(tsv_file),
            pattern=obj.settings.bold.sample_id_pattern,
            marker=marker or None,
            dry_run=dry_run,
        )
        if not dry_run:
            session.commit()
    problems = (
        report.unknown or report.duplicates or report.missing_sampleid or report.conflicts or report.invalid
    )
    if as_json:
        _echo_json(report.as_dict())
    else:
        verb = "would link" if dry_run else "linked"
        click.echo(
            f"{tsv_file}: {report.rows} rows; {verb} {report.linked} ({len(report.updated)} plate wells, "
            f"{len(report.created)} new records)"
        )
        for u in report.unknown:
            click.echo(f"  row {u['row']}: unknown Sample ID {u['sampleid']!r} (no such specimen)", err=True)
        for d in report.duplicates:
            click.echo(
                f"  rows {d['rows']}: Sample ID {d['sampleid']!r} given more than once; not imported",
                err=True,
            )
        for row in report.missing_sampleid:
            click.echo(f"  row {row}: no Sample ID", err=True)
        for c in report.conflicts:
            click.echo(f"  row {c['row']}: {c['plate']} {c['well']} already holds {c['holder']}", err=True)
        for i in report.invalid:
            click.echo(f"  row {i['row']}: {i['problem']}", err=True)
        if report.other_marker:
            click.echo(f"  {report.other_marker} rows of other markers ignored")
    sys.exit(1 if problems else 0)


@barcodes.command("agreement")
@click.option("--sample", "sample_id", help="Only this sample's specimens.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Acceptance threshold for image families.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True, help="One row per barcoded specimen.")
@click.option("--no-mark", is_flag=True, help="Do not record agreement and review marks.")
@click.pass_obj
def barcodes_agreement(
    obj: Any, sample_id: str | None, threshold: float | None, as_json: bool, as_csv: bool, no_mark: bool
) -> None:
    """Image-based family against DNA-based family: confusion table, per-family agreement, and the
    disagreements, which are marked for review."""
    import io

    from labpipe.barcoding.agreement import BarcodedSpecimen, barcode_agreement, confusion_to_text

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    with _session(obj) as session:
        report = barcode_agreement(session, sample_id, threshold, mark=not no_mark)
        if not no_mark:
            session.commit()
    if as_json:
        _echo_json(report.as_dict())
    elif as_csv:
        buffer = io.StringIO()
        fields = list(BarcodedSpecimen.__dataclass_fields__)
        writer = SafeDictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for s in report.specimens:
            writer.writerow(s.as_dict())
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(confusion_to_text(report.summary))
        if report.disagreements:
            click.echo("\ndisagreements (marked for review):")
            for s in report.disagreements:
                flag = " [review]" if s.needs_review else " [verified]"
                click.echo(f"  {s.sampleid:<28} image {s.image_family:<20} DNA {s.dna_family}{flag}")


# --------------------------------------------------------------------------------------------------
# api


@click.command()
@click.option("--host", help="Address to listen on (default: [api] host).")
@click.option("--port", type=int, help="Port (default: [api] port).")
@click.pass_obj
def api(obj: Any, host: str | None, port: int | None) -> None:
    """Serve the HTTP API (OpenAPI schema at /api/openapi.json, docs at /api/docs) and the web UI (/).

    Reads are open to this machine by default ([api] read_access); writes need the token of
    [api] token as 'Authorization: Bearer <token>' (the web UI's login page sets it as a cookie).
    With no token set, one is generated on first start and kept in <data-dir>/state/api-token.
    """
    import uvicorn

    from labpipe.api_token import ensure_api_token, login_message
    from labpipe.web import create_web_app

    obj.overrides.update({"api.host": host, "api.port": port})
    settings = obj.settings
    click.echo(login_message(settings, ensure_api_token(settings)), err=True)
    app = create_web_app(settings)
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="info")
