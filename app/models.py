"""Every ORM model, imported once so Alembic and tests see the whole schema."""

from app.alerts.models import (  # noqa: F401
    Alert,
    AlertDedup,
    DiscordErrorCount,
    DiscordWebhook,
    DispatchPause,
)
from app.auth.models import User  # noqa: F401
from app.backtests.models import BacktestJob  # noqa: F401
from app.billing.models import BillingAccount, BillingSubscription, Payment, StripeEvent  # noqa: F401
from app.brokers.models import BrokerConnection, OAuthState  # noqa: F401
from app.core.db import Base
from app.core.idempotency_models import IdempotencyKey  # noqa: F401
from app.orders.models import Order, OrderEvent  # noqa: F401
from app.providers.broker.paper_models import PaperOrder  # noqa: F401
from app.tools.models import ToolCall  # noqa: F401

metadata = Base.metadata
