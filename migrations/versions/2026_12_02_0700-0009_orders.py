"""orders and order_events: the orders feature's state machine and its audit trail

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "submitting",
    "pending_reconciliation",
    "accepted",
    "new",
    "partially_filled",
    "filled",
    "pending_cancel",
    "canceled",
    "expired",
    "rejected",
    "replaced",
)
_STATUS_LIST = ", ".join(f"'{s}'" for s in STATUSES)


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column(
            "id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("idempotency_claim", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("client_order_id", sa.String(length=48), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("symbol", sa.String(length=16), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("type", sa.String(length=6), nullable=False),
        sa.Column("time_in_force", sa.String(length=3), nullable=False),
        sa.Column("qty", sa.Numeric(), nullable=False),
        sa.Column("limit_price", sa.Numeric(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("filled_qty", sa.Numeric(), server_default=sa.text("0"), nullable=False),
        sa.Column("filled_avg_price", sa.Numeric(), nullable=True),
        sa.Column("broker_order_id", sa.String(length=128), nullable=True),
        sa.Column("broker_status", sa.String(length=32), nullable=True),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("reconcile_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_reconcile_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(f"status IN ({_STATUS_LIST})", name=op.f("ck_orders_status")),
        sa.CheckConstraint("side IN ('buy', 'sell')", name=op.f("ck_orders_side")),
        sa.CheckConstraint("type IN ('market', 'limit')", name=op.f("ck_orders_type")),
        sa.CheckConstraint(
            "time_in_force IN ('day', 'gtc', 'ioc', 'fok')", name=op.f("ck_orders_time_in_force")
        ),
        sa.CheckConstraint("qty > 0", name=op.f("ck_orders_qty")),
        sa.CheckConstraint(
            "(type = 'limit') = (limit_price IS NOT NULL AND limit_price > 0)",
            name=op.f("ck_orders_limit_price"),
        ),
        sa.CheckConstraint("filled_qty >= 0 AND filled_qty <= qty", name=op.f("ck_orders_filled_qty")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("client_order_id", name=op.f("uq_orders_client_order_id")),
    )
    # GET /v1/orders: the user's orders newest first, keyset on (created_at, id).
    op.create_index(
        "ix_orders_user_created",
        "orders",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    # The reconciler's queue: only orders it still has to look at.
    op.create_index(
        "ix_orders_reconcile_due",
        "orders",
        ["next_reconcile_at"],
        postgresql_where=sa.text("next_reconcile_at IS NOT NULL"),
    )
    op.create_table(
        "order_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("order_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("filled_qty", sa.Numeric(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_events_order_id_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
    )
    op.create_index("ix_order_events_order_id", "order_events", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_order_events_order_id", table_name="order_events")
    op.drop_table("order_events")
    op.drop_index("ix_orders_reconcile_due", table_name="orders")
    op.drop_index("ix_orders_user_created", table_name="orders")
    op.drop_table("orders")
