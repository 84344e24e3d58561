"""Provenance and human work: ids never reused, re-detection flags, box edits, decision rules, audit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

- Every table with a numeric id is ``AUTOINCREMENT`` on SQLite, so an id is never handed out
  twice (SQLite otherwise reuses the largest id after it is deleted, and a cached thumbnail or an
  open review page could then show another specimen). PostgreSQL sequences never reuse ids.
- ``specimens``: ``detection_state`` (``detected``, ``not_redetected``, ``drawn``), the detector's
  registry row ``detector_model_id``, and ``box_edited_by``/``box_edited_at`` for a box set by hand.
- ``models.settings``: what shapes a model's output (a detector's thresholds, a classifier's rule).
- ``classifications``: ``threshold`` and ``rule`` that decided the call, ``decided_at`` when it
  was last re-decided from its stored probabilities.
- ``verifications``: ``retracted_at``/``retracted_by`` (an undone verification stays as history).
- ``audit_events``: who changed what, when, with the values before and after.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NUMBERED = ("images", "specimens", "models", "classifications", "verifications", "barcode_links")
_STATES = "detection_state IN ('detected', 'not_redetected', 'drawn')"


def _autoincrement(table: str) -> None:
    """Rebuild ``table`` on SQLite with ``AUTOINCREMENT`` (no-op elsewhere)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def upgrade() -> None:
    """Add the provenance columns and the audit table; make ids unique for ever on SQLite."""
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
    with op.batch_alter_table("specimens") as batch:
        batch.add_column(sa.Column("detector_model_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("detection_state", sa.String(length=16), server_default="detected", nullable=False)
        )
        batch.add_column(sa.Column("box_edited_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("box_edited_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            op.f("fk_specimens_detector_model_id_models"), "models", ["detector_model_id"], ["id"]
        )
        batch.create_index(op.f("ix_specimens_detector_model_id"), ["detector_model_id"], unique=False)
        batch.create_check_constraint(op.f("ck_specimens_detection_state"), _STATES)
    with op.batch_alter_table("classifications") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rule", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("verifications") as batch:
        batch.add_column(sa.Column("retracted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retracted_by", sa.String(length=255), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("specimen_id", sa.Integer(), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("undone_by", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.create_index(op.f("ix_audit_events_at"), ["at"], unique=False)
        batch.create_index(op.f("ix_audit_events_action"), ["action"], unique=False)
        batch.create_index(op.f("ix_audit_events_specimen_id"), ["specimen_id"], unique=False)
        batch.create_index(op.f("ix_audit_events_image_id"), ["image_id"], unique=False)
    for table in _NUMBERED:
        _autoincrement(table)


def downgrade() -> None:
    """Back to revision 0002 (the audit trail and the new columns are dropped)."""
    op.drop_table("audit_events")
    with op.batch_alter_table("verifications") as batch:
        batch.drop_column("retracted_by")
        batch.drop_column("retracted_at")
    with op.batch_alter_table("classifications") as batch:
        batch.drop_column("decided_at")
        batch.drop_column("rule")
        batch.drop_column("threshold")
    with op.batch_alter_table("specimens") as batch:
        batch.drop_constraint(op.f("ck_specimens_detection_state"), type_="check")
        batch.drop_index(op.f("ix_specimens_detector_model_id"))
        batch.drop_constraint(op.f("fk_specimens_detector_model_id_models"), type_="foreignkey")
        batch.drop_column("box_edited_at")
        batch.drop_column("box_edited_by")
        batch.drop_column("detection_state")
        batch.drop_column("detector_model_id")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("settings")
