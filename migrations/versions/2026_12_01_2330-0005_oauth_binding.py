"""oauth_states.binding_hash: the OAuth state is bound to the browser that started the flow

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SHA-256 of the td_oauth_binding cookie; NULL for states issued before this revision, which then
    # complete only with the owner's bearer token.
    op.add_column("oauth_states", sa.Column("binding_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("oauth_states", "binding_hash")
