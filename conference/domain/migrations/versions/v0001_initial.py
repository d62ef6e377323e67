"""Initial schema: units, points, users.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conference.domain.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('province', 'district', 'commune')", name="ck_units_kind"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["units.id"], name="fk_units_parent_id_units", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_units"),
        sa.UniqueConstraint("code", name="uq_units_code"),
    )
    op.create_index("ix_units_parent_id", "units", ["parent_id"])
    op.create_table(
        "points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("contact_email", sa.String(length=254), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("bandwidth_profile", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "bandwidth_profile IN ('low', 'standard', 'high')", name="ck_points_bandwidth"
        ),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["units.id"], name="fk_points_unit_id_units", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_points"),
        sa.UniqueConstraint("code", name="uq_points_code"),
    )
    op.create_index("ix_points_unit_id", "points", ["unit_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=True),
        sa.Column("point_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_login_at", UTCDateTime(), nullable=True),
        sa.Column("password_changed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'chair', 'secretary', 'operator')", name="ck_users_role"
        ),
        sa.ForeignKeyConstraint(
            ["point_id"], ["points.id"], name="fk_users_point_id_points", ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["units.id"], name="fk_users_unit_id_units", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_index("ix_users_point_id", "users", ["point_id"])
    op.create_index("ix_users_unit_id", "users", ["unit_id"])


def downgrade() -> None:
    op.drop_table("users")
    op.drop_table("points")
    op.drop_table("units")
