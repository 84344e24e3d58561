"""A plate's boxes reviewed: every specimen on it checked by a person, none missing.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-18

- ``images.boxes_reviewed_by``: who marked the plate's boxes reviewed (``None``: not marked).
- ``images.boxes_reviewed_at``: when (UTC). A marked plate is training data for the detector
  (``labpipe export coco``); unmarking clears both.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the two review columns to ``images``."""
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("boxes_reviewed_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("boxes_reviewed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Back to revision 0004 (the review columns are dropped)."""
    with op.batch_alter_table("images") as batch:
        batch.drop_column("boxes_reviewed_at")
        batch.drop_column("boxes_reviewed_by")
