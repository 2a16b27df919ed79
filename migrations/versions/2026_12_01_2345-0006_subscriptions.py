"""billing_subscriptions: subscription status per Stripe subscription id, not per customer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The order in which the app picks the subscription that speaks for a customer (billing repository):
# an active or trialing one first, then the most recently changed. The downgrade folds with it.
_SPEAKS_FIRST = "status IN ('active', 'trialing') DESC, status_event_at DESC, updated_at DESC"


def upgrade() -> None:
    op.create_table(
        "billing_subscriptions",
        sa.Column(
            "id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stripe_customer_id"],
            ["billing_accounts.stripe_customer_id"],
            name=op.f("fk_billing_subscriptions_stripe_customer_id_billing_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_subscriptions")),
        sa.UniqueConstraint(
            "stripe_subscription_id", name=op.f("uq_billing_subscriptions_stripe_subscription_id")
        ),
    )
    op.create_index(
        op.f("ix_billing_subscriptions_stripe_customer_id"), "billing_subscriptions", ["stripe_customer_id"]
    )
    # At most one status per customer whose subscription is not known.
    op.create_index(
        "uq_billing_subscriptions_unidentified",
        "billing_subscriptions",
        ["stripe_customer_id"],
        unique=True,
        postgresql_where=sa.text("stripe_subscription_id IS NULL"),
    )
    # The per-customer status so far came from some subscription of that customer whose id was never
    # stored. Dropping it would show every paying user `none` until Stripe's next event for them (up to
    # a billing period away), so it is carried into an unidentified row instead; the app lets that row
    # give way to the first newer state of an identified subscription that started (docs/billing.md).
    op.execute(
        "INSERT INTO billing_subscriptions (stripe_subscription_id, stripe_customer_id, status, status_event_at,"
        " current_period_end, updated_at)"
        " SELECT NULL, stripe_customer_id, status, COALESCE(status_event_at, updated_at), current_period_end,"
        " updated_at FROM billing_accounts WHERE status <> 'none'"
    )
    op.drop_column("billing_accounts", "current_period_end")
    op.drop_column("billing_accounts", "status_event_at")
    op.drop_column("billing_accounts", "status")


def downgrade() -> None:
    op.add_column(
        "billing_accounts",
        sa.Column("status", sa.String(length=32), server_default=sa.text("'none'"), nullable=False),
    )
    op.add_column("billing_accounts", sa.Column("status_event_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "billing_accounts", sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True)
    )
    # One status per customer again: the one the user saw (the subscription that speaks first), stamped
    # with the newest event time of any of the customer's subscriptions, so the per-customer code that
    # runs after the downgrade ignores events older than what was already applied.
    op.execute(
        "UPDATE billing_accounts AS a SET status = s.status, status_event_at = s.newest,"
        " current_period_end = s.current_period_end"
        " FROM (SELECT DISTINCT ON (stripe_customer_id) stripe_customer_id, status, current_period_end,"
        "       max(status_event_at) OVER (PARTITION BY stripe_customer_id) AS newest"
        "       FROM billing_subscriptions"
        f"      ORDER BY stripe_customer_id, {_SPEAKS_FIRST}) AS s"
        " WHERE a.stripe_customer_id = s.stripe_customer_id"
    )
    op.drop_index("uq_billing_subscriptions_unidentified", table_name="billing_subscriptions")
    op.drop_index(op.f("ix_billing_subscriptions_stripe_customer_id"), table_name="billing_subscriptions")
    op.drop_table("billing_subscriptions")
