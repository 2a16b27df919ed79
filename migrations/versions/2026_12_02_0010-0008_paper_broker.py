"""paper_orders: the paper broker's simulated orders, client_order_id unique per account

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "paper_orders",
        sa.Column(
            "id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("client_order_id", sa.String(length=48), nullable=False),
        sa.Column("symbol", sa.String(length=16), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("type", sa.String(length=6), nullable=False),
        sa.Column("time_in_force", sa.String(length=3), nullable=False),
        sa.Column("qty", sa.Numeric(), nullable=False),
        sa.Column("limit_price", sa.Numeric(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("filled_qty", sa.Numeric(), nullable=False),
        sa.Column("filled_avg_price", sa.Numeric(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("side IN ('buy', 'sell')", name=op.f("ck_paper_orders_side")),
        sa.CheckConstraint("type IN ('market', 'limit')", name=op.f("ck_paper_orders_type")),
        sa.CheckConstraint(
            "time_in_force IN ('day', 'gtc', 'ioc', 'fok')", name=op.f("ck_paper_orders_time_in_force")
        ),
        sa.CheckConstraint(
            "status IN ('new', 'filled', 'canceled', 'expired')", name=op.f("ck_paper_orders_status")
        ),
        sa.CheckConstraint("qty > 0", name=op.f("ck_paper_orders_qty")),
        sa.CheckConstraint(
            "(type = 'limit') = (limit_price IS NOT NULL AND limit_price > 0)",
            name=op.f("ck_paper_orders_limit_price"),
        ),
        sa.CheckConstraint("filled_qty >= 0 AND filled_qty <= qty", name=op.f("ck_paper_orders_filled_qty")),
        sa.CheckConstraint(
            "status <> 'filled' OR (filled_qty = qty AND filled_avg_price IS NOT NULL)",
            name=op.f("ck_paper_orders_filled"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_paper_orders")),
        sa.UniqueConstraint(
            "account", "client_order_id", name=op.f("uq_paper_orders_account_client_order_id")
        ),
    )
    # The matcher's working set: resting orders by symbol, oldest first (app/providers/broker/paper.py).
    op.create_index(
        "ix_paper_orders_open",
        "paper_orders",
        ["symbol", "created_at"],
        postgresql_where=sa.text("status = 'new'"),
    )


def downgrade() -> None:
    op.drop_index("ix_paper_orders_open", table_name="paper_orders")
    op.drop_table("paper_orders")
