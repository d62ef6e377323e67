"""Meetings, recurring series, invitations, reminders and attendance.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conference.domain.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("chair_id", sa.Integer(), nullable=False),
        sa.Column("rrule", sa.String(length=500), nullable=False),
        sa.Column("first_start_local", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("recording_policy", sa.String(length=8), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("agenda", sa.JSON(), nullable=False),
        sa.Column("materialized_until", UTCDateTime(), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "recording_policy IN ('none', 'auto', 'ask')", name="ck_series_recording_policy"
        ),
        sa.ForeignKeyConstraint(
            ["chair_id"], ["users.id"], name="fk_series_chair_id_users", ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["units.id"], name="fk_series_unit_id_units", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
    )
    op.create_index("ix_series_chair_id", "series", ["chair_id"])
    op.create_index("ix_series_unit_id", "series", ["unit_id"])
    op.create_table(
        "meetings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=128), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("chair_id", sa.Integer(), nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=False),
        sa.Column("end_at", UTCDateTime(), nullable=False),
        sa.Column("recording_policy", sa.String(length=8), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=True),
        sa.Column("occurrence_start", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "recording_policy IN ('none', 'auto', 'ask')", name="ck_meetings_recording_policy"
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'live', 'ended', 'cancelled')", name="ck_meetings_status"
        ),
        sa.CheckConstraint("end_at > start_at", name="ck_meetings_times"),
        sa.ForeignKeyConstraint(
            ["chair_id"], ["users.id"], name="fk_meetings_chair_id_users", ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name="fk_meetings_series_id_series", ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["units.id"], name="fk_meetings_unit_id_units", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_meetings"),
        sa.UniqueConstraint("series_id", "occurrence_start", name="uq_meetings_occurrence"),
        sa.UniqueConstraint("uid", name="uq_meetings_uid"),
    )
    op.create_index("ix_meetings_chair_id", "meetings", ["chair_id"])
    op.create_index("ix_meetings_series_id", "meetings", ["series_id"])
    op.create_index("ix_meetings_start_at", "meetings", ["start_at"])
    op.create_index("ix_meetings_status", "meetings", ["status"])
    op.create_index("ix_meetings_unit_id", "meetings", ["unit_id"])
    op.create_table(
        "series_exceptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("original_start", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('cancelled', 'modified')", name="ck_series_exceptions_kind"),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name="fk_series_exceptions_series_id_series",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_series_exceptions"),
        sa.UniqueConstraint("series_id", "original_start", name="uq_series_exceptions_occurrence"),
    )
    op.create_table(
        "series_points",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["point_id"],
            ["points.id"],
            name="fk_series_points_point_id_points",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name="fk_series_points_series_id_series",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("series_id", "point_id", name="pk_series_points"),
    )
    op.create_table(
        "agenda_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("meeting_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("presenter", sa.String(length=200), nullable=False),
        sa.Column("presenter_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["meeting_id"],
            ["meetings.id"],
            name="fk_agenda_items_meeting_id_meetings",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["presenter_user_id"],
            ["users.id"],
            name="fk_agenda_items_presenter_user_id_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agenda_items"),
        sa.UniqueConstraint("meeting_id", "position", name="uq_agenda_items_position"),
    )
    op.create_index("ix_agenda_items_meeting_id", "agenda_items", ["meeting_id"])
    op.create_index("ix_agenda_items_presenter_user_id", "agenda_items", ["presenter_user_id"])
    op.create_table(
        "attendance_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("meeting_id", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("participant_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("kind IN ('join', 'leave')", name="ck_attendance_events_kind"),
        sa.ForeignKeyConstraint(
            ["meeting_id"],
            ["meetings.id"],
            name="fk_attendance_events_meeting_id_meetings",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["point_id"],
            ["points.id"],
            name="fk_attendance_events_point_id_points",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_attendance_events_user_id_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_attendance_events"),
    )
    op.create_index("ix_attendance_events_at", "attendance_events", ["at"])
    op.create_index("ix_attendance_events_meeting_id", "attendance_events", ["meeting_id"])
    op.create_index("ix_attendance_events_point_id", "attendance_events", ["point_id"])
    op.create_index("ix_attendance_events_user_id", "attendance_events", ["user_id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("meeting_id", sa.Integer(), nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=False),
        sa.Column("answer", sa.String(length=16), nullable=False),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("sent_sequence", sa.Integer(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("cancel_sent", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "answer IN ('pending', 'accepted', 'declined')", name="ck_invitations_answer"
        ),
        sa.ForeignKeyConstraint(
            ["meeting_id"],
            ["meetings.id"],
            name="fk_invitations_meeting_id_meetings",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["point_id"], ["points.id"], name="fk_invitations_point_id_points", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.UniqueConstraint("meeting_id", "point_id", name="uq_invitations_meeting_point"),
    )
    op.create_index("ix_invitations_meeting_id", "invitations", ["meeting_id"])
    op.create_index("ix_invitations_point_id", "invitations", ["point_id"])
    op.create_table(
        "reminders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invitation_id", sa.Integer(), nullable=False),
        sa.Column("lead_seconds", sa.Integer(), nullable=False),
        sa.Column("meeting_start", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.CheckConstraint("state IN ('sent', 'skipped', 'failed')", name="ck_reminders_state"),
        sa.ForeignKeyConstraint(
            ["invitation_id"],
            ["invitations.id"],
            name="fk_reminders_invitation_id_invitations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reminders"),
        sa.UniqueConstraint("invitation_id", "lead_seconds", name="uq_reminders_invitation_lead"),
    )
    op.create_index("ix_reminders_invitation_id", "reminders", ["invitation_id"])


def downgrade() -> None:
    op.drop_table("reminders")
    op.drop_table("invitations")
    op.drop_table("attendance_events")
    op.drop_table("agenda_items")
    op.drop_table("series_points")
    op.drop_table("series_exceptions")
    op.drop_table("meetings")
    op.drop_table("series")
