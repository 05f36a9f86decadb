"""require_collection_description: every collection gets a non-blank description.

Existing NULL or blank descriptions become 'No description provided'; the downgrade drops the
constraint and the NOT NULL but does not restore the old NULLs (that data is gone).

Revision ID: 0002
Revises: 0001
Create Date: 2024-02-20 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE collections SET description = 'No description provided' "
        "WHERE description IS NULL OR length(trim(description)) = 0"
    )
    op.alter_column("collections", "description", existing_type=sa.Text(), nullable=False)
    op.create_check_constraint(
        "description_not_empty", "collections", "length(trim(description)) > 0"
    )


def downgrade() -> None:
    op.drop_constraint("description_not_empty", "collections", type_="check")
    op.alter_column("collections", "description", existing_type=sa.Text(), nullable=True)
