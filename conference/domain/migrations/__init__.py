"""Alembic migrations of the control-plane database (applied by `conference db upgrade`)."""
