from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool = False


class SubscriptionOut(BaseModel):
    status: str
    current_period_end: dt.datetime | None


class PaymentOut(BaseModel):
    invoice_id: str
    amount: str
    currency: str
    paid_at: dt.datetime


class PaymentsPage(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None
