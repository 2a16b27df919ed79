"""Every ORM model, imported once so Alembic and tests see the whole schema."""

from app.auth.models import User  # noqa: F401
from app.core.db import Base

metadata = Base.metadata
