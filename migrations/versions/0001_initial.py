"""Initial schema: samples, images, specimens, models, classifications, verifications, barcode links.

Revision ID: 0001
Revises:
Create Date: 2024-11-22

Constraint and index names follow ``labpipe.db.models.NAMING_CONVENTION`` (``pk_<table>``,
``fk_<table>_<column>_<referred table>``, ``uq_<table>_<columns>``, ``ck_<table>_<name>``,
``ix_<table>_<column>``), written out here so this revision never changes when the models do.
Timestamps are ``DateTime(timezone=True)`` and hold UTC.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "samples",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=255), nullable=True),
        sa.Column("habitat", sa.String(length=255), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("collection_date", sa.Date(), nullable=True),
        sa.Column("collector", sa.String(length=255), nullable=True),
        sa.Column("method", sa.String(length=255), nullable=True),
        sa.Column("fraction", sa.String(length=255), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
    )

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("weights_hash", sa.String(length=64), nullable=False),
        sa.Column("labels_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint("kind IN ('classifier', 'detector')", name=op.f("ck_models_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("version", name=op.f("uq_models_version")),
    )

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=64), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("archived_path", sa.Text(), nullable=True),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("source_channels", sa.Integer(), nullable=True),
        sa.Column("bit_depth", sa.Integer(), nullable=True),
        sa.Column("um_per_px", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detector_version", sa.String(length=255), nullable=True),
        sa.Column("n_specimens", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("processed_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'done', 'failed', 'quarantined')",
            name=op.f("ck_images_status"),
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_images_sample_id_samples"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_images_content_hash")),
    )
    op.create_index(op.f("ix_images_sample_id"), "images", ["sample_id"])
    op.create_index(op.f("ix_images_status"), "images", ["status"])

    op.create_table(
        "specimens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("index_in_image", sa.Integer(), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("detector_version", sa.String(length=255), nullable=False),
        sa.Column("crop_path", sa.Text(), nullable=False),
        sa.Column("crop_size", sa.Integer(), nullable=False),
        sa.Column("length_mm", sa.Float(), nullable=True),
        sa.Column("width_mm", sa.Float(), nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_specimens_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_specimens")),
        sa.UniqueConstraint("image_id", "index_in_image", name=op.f("uq_specimens_image_id_index_in_image")),
    )
    op.create_index(op.f("ix_specimens_image_id"), "specimens", ["image_id"])

    op.create_table(
        "classifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=128), nullable=True),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("rejected", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("top_k", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_classifications_model_id_models")),
        sa.ForeignKeyConstraint(
            ["specimen_id"],
            ["specimens.id"],
            name=op.f("fk_classifications_specimen_id_specimens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_classifications")),
        sa.UniqueConstraint("specimen_id", "model_id", name=op.f("uq_classifications_specimen_id_model_id")),
    )
    op.create_index(op.f("ix_classifications_model_id"), "classifications", ["model_id"])
    op.create_index(op.f("ix_classifications_specimen_id"), "classifications", ["specimen_id"])

    op.create_table(
        "verifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("verified_by", sa.String(length=255), nullable=False),
        _timestamp("verified_at"),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('confirmed', 'corrected', 'not_specimen', 'multiple')",
            name=op.f("ck_verifications_status"),
        ),
        sa.ForeignKeyConstraint(
            ["specimen_id"],
            ["specimens.id"],
            name=op.f("fk_verifications_specimen_id_specimens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
    )
    op.create_index(op.f("ix_verifications_specimen_id"), "verifications", ["specimen_id"])

    op.create_table(
        "barcode_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.Integer(), nullable=True),
        sa.Column("plate", sa.String(length=64), nullable=False),
        sa.Column("well", sa.String(length=3), nullable=False),
        sa.Column("sampleid", sa.String(length=255), nullable=False),
        sa.Column("processid", sa.String(length=64), nullable=True),
        sa.Column("bin_uri", sa.String(length=64), nullable=True),
        sa.Column("sequence", sa.Text(), nullable=True),
        sa.Column("dna_family", sa.String(length=128), nullable=True),
        sa.Column("taxonomy", sa.JSON(), nullable=True),
        _timestamp("imported_at"),
        sa.ForeignKeyConstraint(
            ["specimen_id"],
            ["specimens.id"],
            name=op.f("fk_barcode_links_specimen_id_specimens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_barcode_links")),
    )
    op.create_index(op.f("ix_barcode_links_sampleid"), "barcode_links", ["sampleid"])
    op.create_index(op.f("ix_barcode_links_specimen_id"), "barcode_links", ["specimen_id"])


def downgrade() -> None:
    """Drop every table (children first); their indexes go with them."""
    for table in (
        "barcode_links",
        "verifications",
        "classifications",
        "specimens",
        "images",
        "models",
        "samples",
    ):
        op.drop_table(table)
