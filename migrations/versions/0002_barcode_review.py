"""Barcoding: results without a labpipe plate, one specimen per well, and DNA-vs-image review marks.

Revision ID: 0002
Revises: 0001
Create Date: 2024-12-02

``barcode_links``:

- ``plate`` and ``well`` may be empty: BOLD results can arrive for specimens that were not laid out
  on a plate by labpipe (``labpipe barcodes import`` links them by Sample ID alone);
- ``(plate, well)`` is unique: a well holds one specimen;
- ``agreement`` (``agree``, ``disagree``, ``image_rejected``; empty while not compared) and
  ``needs_review`` record ``labpipe barcodes agreement``: the image-based family against the
  DNA-based one, disagreements marked for a person to review.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Relax plate/well, add the well uniqueness and the review columns."""
    with op.batch_alter_table("barcode_links") as batch:
        batch.alter_column("plate", existing_type=sa.String(length=64), nullable=True)
        batch.alter_column("well", existing_type=sa.String(length=3), nullable=True)
        batch.add_column(sa.Column("agreement", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("needs_review", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_unique_constraint(op.f("uq_barcode_links_plate_well"), ["plate", "well"])
        batch.create_check_constraint(
            op.f("ck_barcode_links_agreement"), "agreement IN ('agree', 'disagree', 'image_rejected')"
        )


def downgrade() -> None:
    """Back to revision 0001; links without a plate get an empty plate and well."""
    op.execute("UPDATE barcode_links SET plate = '' WHERE plate IS NULL")
    op.execute("UPDATE barcode_links SET well = '' WHERE well IS NULL")
    with op.batch_alter_table("barcode_links") as batch:
        batch.drop_constraint(op.f("ck_barcode_links_agreement"), type_="check")
        batch.drop_constraint(op.f("uq_barcode_links_plate_well"), type_="unique")
        batch.drop_column("needs_review")
        batch.drop_column("agreement")
        batch.alter_column("well", existing_type=sa.String(length=3), nullable=False)
        batch.alter_column("plate", existing_type=sa.String(length=64), nullable=False)
