"""The ``labpipe`` command line. Thin: it parses options, calls the stages and prints results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from labpipe.config import Settings, load_settings
from labpipe.errors import LabpipeError

__all__ = ["main"]


class _Context:
    def __init__(self, config: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from labpipe.logs import configure_logging

            self._settings = load_settings(self.config, self.overrides)
            configure_logging(self._settings.logging.level, self._settings.logging.format)
        return self._settings


pass_ctx = click.make_pass_decorator(_Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration file (default: $LABPIPE_CONFIG, else ./config.toml if present).",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Storage root folder.")
@click.option("--db", "db_url", help="Database URL (SQLAlchemy), e.g. postgresql+psycopg://host/labpipe.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.option(
    "--families-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The lab's own list of family names (CSV) a person may give besides the shipped list.",
)
@click.version_option(package_name="labpipe")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    data_dir: Path | None,
    db_url: str | None,
    log_level: str | None,
    log_format: str | None,
    families_file: Path | None,
) -> None:
    """labpipe: find, crop, classify and count insect specimens on Petri-dish images.

    Images go in, specimens with square crops and taxonomic families come out, recorded in a
    SQL database (SQLite by default, PostgreSQL in production). Settings come from config.toml,
    LABPIPE_<SECTION>_<KEY> environment variables and the options below.
    """
    ctx.obj = _Context(
        config,
        {
            "storage.root": data_dir,
            "database.url": db_url,
            "logging.level": log_level,
            "logging.format": log_format,
            "review.families_file": families_file,
        },
    )


def _fail(exc: LabpipeError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(2)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sample", "sample_id", help="Sample id the images belong to (created if new).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image (a JSON list).")
@click.option("--threshold", type=float, help="Classifier rejection threshold (overrides config).")
@click.option("--detector", "detector_kind", help="'classical' or a DETR model directory.")
@click.option("--classifier", "classifier_model", help="Classifier model (builtin:... or a directory).")
@click.option(
    "--drop-reviewed",
    is_flag=True,
    help="Delete reviewed, plated or barcoded specimens that this run does not find again "
    "(default: keep them, flagged 'not re-detected'). What is dropped is reported and kept in the "
    "audit trail.",
)
@pass_ctx
def process(
    obj: _Context,
    images: tuple[Path, ...],
    sample_id: str | None,
    as_json: bool,
    threshold: float | None,
    detector_kind: str | None,
    classifier_model: str | None,
    drop_reviewed: bool,
) -> None:
    """Process IMAGES now (TIFF/BigTIFF, JPEG, PNG) and record the results in the database.

    Each image is read lazily, specimens are detected on an overview, cropped from full
    resolution with a margin, padded to squares, classified to family, and recorded in one
    transaction, by the daemon's own jobs run inline. Re-processing the same bytes matches the new
    detections to the stored specimens: those found again keep their ids, verifications, box edits,
    wells and barcode links; reviewed ones not found again are kept and flagged. Exit status 1 when
    any image could not be read (the others are still processed).
    """
    obj.overrides.update({"classifier.threshold": threshold})
    from labpipe.pipeline import Pipeline

    try:
        pipeline = Pipeline.from_settings(obj.settings, classifier=classifier_model, detector=detector_kind)
    except LabpipeError as exc:
        _fail(exc)
        return
    results: list[dict[str, Any]] = []
    failures = 0
    with pipeline:
        for path in images:
            try:
                result = pipeline.process_file(path, sample_id=sample_id, drop_human_work=drop_reviewed)
            except LabpipeError as exc:
                failures += 1
                click.echo(f"error: {exc.message}", err=True)
                results.append({"path": str(path), "error": exc.message, "reason": exc.reason_code})
                continue
            results.append(result)
            if not as_json:
                click.echo(_format_image_result(result))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    sys.exit(1 if failures else 0)


def _format_image_result(result: dict[str, Any]) -> str:
    scale = f"{result['um_per_px']:.2f} µm/px" if result["um_per_px"] else "scale unknown"
    lines = [
        f"{result['path']}: {result['width']}x{result['height']} px, {scale}, "
        f"sample {result['sample'] or '-'}, {len(result['specimens'])} specimens "
        f"in {result['seconds']:.1f} s"
    ]
    counts = result["counts"]
    families = sorted((k for k in counts if k != "rejected"), key=lambda k: (-counts[k], k))
    for family in families:
        lines.append(f"  {family:<20} {counts[family]:>5}")
    lines.append(f"  {'rejected':<20} {counts.get('rejected', 0):>5}")
    rerun = result.get("reconciliation")
    if rerun and (rerun["matched"] or rerun["deleted"] or rerun["not_redetected"] or rerun["dropped"]):
        lines.append(
            f"  re-run: {rerun['matched']} found again (ids kept), {rerun['new']} new, "
            f"{rerun['deleted']} unreviewed not found again (removed)"
        )
        for key, what in (
            ("not_redetected", "kept, flagged not re-detected"),
            ("dropped", "DROPPED (--drop-reviewed)"),
        ):
            for item in rerun[key]:
                lines.append(f"  specimen {item['id']} ({', '.join(item['work'])}): {what}")
    return "\n".join(lines)


@cli.command()
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True
)
@click.option("--size", type=int, default=6000, show_default=True, help="Plate width and height in px.")
@click.option("--specimens", type=int, default=40, show_default=True, help="Separated specimens.")
@click.option("--touching-pairs", type=int, default=4, show_default=True)
@click.option("--debris", type=int, default=40, show_default=True)
@click.option("--um-per-px", type=float, default=5.0, show_default=True)
@click.option(
    "--real-cutouts",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of real specimen crops to paste (default: carabidae-crops in $LABPIPE_SHARED_DATA, "
    "else in ../shared/data beside the project, if present).",
)
@click.option("--procedural-only", is_flag=True, help="Draw every specimen procedurally.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(
    out: Path,
    size: int,
    specimens: int,
    touching_pairs: int,
    debris: int,
    um_per_px: float,
    real_cutouts: Path | None,
    procedural_only: bool,
    seed: int,
) -> None:
    """Write a synthetic plate (tiled BigTIFF) and its COCO ground truth into a folder.

    The plate is a rendered filter-paper Petri dish with specimens at known positions (some
    touching) and debris; with real cut-outs available, half the specimens are real ground
    beetles. Drop it into the inbox, or run `labpipe process OUT/plate.tif`.
    """
    from labpipe.synth.coco import write_coco
    from labpipe.synth.plate import PlateSpec, write_plate

    if procedural_only:
        real_cutouts, why_none = None, "--procedural-only"
    else:
        real_cutouts, why_none = _demo_cutouts(real_cutouts)
    spec = PlateSpec(
        width=size,
        height=size,
        n_specimens=specimens,
        n_touching_pairs=touching_pairs,
        n_debris=debris,
        um_per_px=um_per_px,
        real_cutouts=real_cutouts,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    plate_path = out / "plate.tif"
    truth = write_plate(spec, plate_path)
    write_coco(truth, plate_path.name, out / "plate.coco.json")
    n_touching = sum(1 for o in truth.specimens if o.touching)
    n_real = sum(1 for o in truth.specimens if o.source != "procedural")
    click.echo(
        f"wrote {plate_path}: {truth.width}x{truth.height} px at {um_per_px} µm/px, "
        f"{len(truth.specimens)} specimens ({n_touching} touching, {n_real} real cut-outs), "
        f"{len(truth.objects) - len(truth.specimens)} debris particles"
    )
    click.echo(f"wrote {out / 'plate.coco.json'}: ground-truth boxes (COCO)")
    if real_cutouts is not None:
        click.echo(f"real cut-outs: {n_real} of {len(truth.specimens)} specimens, from {real_cutouts}")
    else:
        click.echo(f"real cut-outs: none ({why_none}); every specimen is drawn procedurally")


def _demo_cutouts(explicit: Path | None) -> tuple[Path | None, str]:
    """The folder of real cut-outs ``labpipe demo`` pastes, or None and why there is none.

    ``--real-cutouts``, else ``carabidae-crops`` in the shared data folder
    (:func:`labpipe.evaluation.real_table.default_data_dir`: ``$LABPIPE_SHARED_DATA``, else
    ``shared/data`` beside the project root), whatever the working directory.
    """
    if explicit is not None:
        if not explicit.is_dir():
            raise click.BadParameter(f"{explicit} is not a folder", param_hint="--real-cutouts")
        return explicit, ""
    from labpipe.evaluation.real_table import default_data_dir

    folder = default_data_dir() / "carabidae-crops"
    if folder.is_dir():
        return folder, ""
    return None, f"{folder} not found; pass --real-cutouts DIR or set LABPIPE_SHARED_DATA"


@cli.group("eval")
def evaluate() -> None:
    """Measure the detector and classifier on folders of real, labelled images."""


@evaluate.command("counts")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--expected", type=int, required=True, help="Specimens in every image (e.g. 1 or 0).")
@click.option("--detector", "detector_kind", help="'classical' or a DETR model directory (default: config).")
@click.option(
    "--um-per-px",
    type=float,
    help="Scale of images that carry none (default: [imaging] um_per_px); a learned detector needs it.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def eval_counts(
    obj: _Context,
    folders: tuple[Path, ...],
    expected: int,
    detector_kind: str | None,
    um_per_px: float | None,
    as_json: bool,
) -> None:
    """Share of images in FOLDERS where the detector finds exactly --expected specimens.

    For wells or dishes photographed one specimen at a time (expected 1) and empty ones
    (expected 0): the detector's false positives and misses, without box annotations.
    """
    from labpipe.evaluation.folders import evaluate_counts
    from labpipe.pipeline import active_detector_for

    detector = active_detector_for(obj.settings, detector_kind)
    reports = [
        evaluate_counts(
            f,
            expected,
            detector,
            obj.settings.imaging.overview_max_side,
            progress=not as_json,
            um_per_px_fallback=um_per_px or obj.settings.um_per_px_fallback,
        )
        for f in folders
    ]
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
        return
    for r in reports:
        click.echo(
            f"{r.folder}: {r.share_exact:.3f} of {r.n_images} images have exactly {expected} "
            f"(detections per image: {r.histogram})"
        )


@evaluate.command("family")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--family", required=True, help="The family every crop in FOLDERS belongs to.")
@click.option("--threshold", type=float, help="Rejection threshold (default: config).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def eval_family(
    obj: _Context, folders: tuple[Path, ...], family: str, threshold: float | None, as_json: bool
) -> None:
    """Share of crops in FOLDERS whose top family is --family, and accepted as it."""
    from labpipe.classify.loader import configured_classifier
    from labpipe.evaluation.folders import evaluate_family

    classifier = configured_classifier(obj.settings, threshold=threshold)
    threshold = float(classifier.threshold)  # type: ignore[attr-defined]
    reports = [evaluate_family(f, family, classifier, threshold, progress=not as_json) for f in folders]
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
        return
    for r in reports:
        click.echo(
            f"{r.folder}: top family {family} {r.share_top:.3f}, accepted as {family} "
            f"{r.share_accepted:.3f}, rejected {r.share_rejected:.3f} of {r.n_images} "
            f"(threshold {threshold})"
        )


@cli.group()
def db() -> None:
    """Database schema management (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(obj: _Context, revision: str) -> None:
    """Create or migrate the database schema to REVISION."""
    from labpipe.db.migrate import current_revision, upgrade

    url = obj.settings.database_url
    upgrade(url, revision)
    click.echo(f"database {_redact(url)} at revision {current_revision(url)}")


@db.command("current")
@pass_ctx
def db_current(obj: _Context) -> None:
    """Print the database's current schema revision."""
    from labpipe.db.migrate import current_revision

    click.echo(current_revision(obj.settings.database_url) or "empty (run: labpipe db upgrade)")


@cli.group()
def sessions() -> None:
    """Web UI logins."""


@sessions.command("revoke")
@pass_ctx
def sessions_revoke(obj: _Context) -> None:
    """Log every web UI session out at once (for example after a laptop was lost)."""
    from labpipe.web.auth import session_store

    generation = session_store(obj.settings).revoke_all()
    click.echo(f"every web login ended (session generation {generation}); people log in again with the token")


@cli.command("config")
@pass_ctx
def show_config(obj: _Context) -> None:
    """Print the effective configuration (after file, environment and flags) as TOML."""
    settings = obj.settings
    click.echo(f"# source: {settings.source}")
    for section, values in settings.as_dict().items():
        click.echo(f"\n[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


from labpipe.cli.models import eval_classifier, models, reclassify, train  # noqa: E402

cli.add_command(train)
cli.add_command(models)
cli.add_command(reclassify)
evaluate.add_command(eval_classifier, "classifier")

from labpipe.cli.detector import eval_detector, eval_table, train_detector_command  # noqa: E402

train.add_command(train_detector_command, "detector")
evaluate.add_command(eval_detector, "detector")
evaluate.add_command(eval_table, "table")

from labpipe.cli.records import api, barcodes, counts, export, images, plates, samples  # noqa: E402

for _command in (samples, counts, export, plates, barcodes, images, api):
    cli.add_command(_command)

from labpipe.cli.daemon import retry, serve, status, watch, worker  # noqa: E402

cli.add_command(serve)
cli.add_command(watch)
cli.add_command(worker)
cli.add_command(status)
cli.add_command(retry)

from labpipe.cli.bench import bench  # noqa: E402

cli.add_command(bench)


def main() -> None:
    try:
        cli(prog_name="labpipe")
    except LabpipeError as exc:
        _fail(exc)


if __name__ == "__main__":
    main()
