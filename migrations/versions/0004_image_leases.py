"""Worker leases on images: who holds a processing image, and until when.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-11

- ``images.lease_owner``: the worker process holding a ``processing`` image (``host:pid:token``).
- ``images.lease_expires_at``: when its claim lapses unless its heartbeat renews it. A processing
  image whose lease has expired (or that has none, as every image processing before this revision)
  is handed to another worker by the next sweep.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the two lease columns to ``images``."""
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Back to revision 0003 (the lease columns are dropped)."""
    with op.batch_alter_table("images") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
