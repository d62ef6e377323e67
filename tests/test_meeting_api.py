"""The meetings JSON API (/api/v1/meetings, /api/v1/series) against the real server."""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from openapi_spec_validator import validate as validate_openapi

from conference.domain import attendance
from conference.domain import meetings as svc
from conference.domain.meetings import ZONE

from .test_api import Client, client, is_error
from .test_meeting_pages import district, schedule
from .test_webauth import Browser, Site, any_site, browsers, site  # noqa: F401

MEETING_PATHS = {
    ("get", "/meetings"),
    ("post", "/meetings"),
    ("get", "/meetings/{meeting_id}"),
    ("patch", "/meetings/{meeting_id}"),
    ("post", "/meetings/{meeting_id}/cancel"),
    ("get", "/meetings/{meeting_id}/invitations"),
    ("post", "/meetings/{meeting_id}/invitations/send"),
    ("get", "/meetings/{meeting_id}/attendance"),
    ("post", "/series"),
}


def new_meeting(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Giao ban tuần",
        "unit": "huyen-a",
        "chair": "ct-a",
        "start": "2030-01-07T08:00:00+07:00",
        "end": "2030-01-07T09:30:00+07:00",
        "points": ["p-a1", "p-a2"],
        "agenda": [{"title": "Báo cáo", "presenter": "Văn phòng"}],
        "recording_policy": "auto",
        "notes": "Mang theo số liệu",
    }
    body.update(changes)
    return body


async def test_meetings_openapi(site: Site, browsers: list[Browser]) -> None:
    anonymous = await client(site, browsers)
    status, document, _ = await anonymous.call("GET", "/openapi.json")
    assert status == 200
    validate_openapi(document)
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert MEETING_PATHS <= documented
    patch = document["paths"]["/meetings/{meeting_id}"]["patch"]
    assert {"401", "403", "404", "409", "422"} <= set(patch["responses"])
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MeetingChange"
    }
    schemas = document["components"]["schemas"]
    assert schemas["MeetingChange"]["required"] == ["version"]
    assert "field" in schemas["Error"]["properties"]
    listing = document["paths"]["/meetings"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"from", "to", "unit"}
    for method, path in MEETING_PATHS:
        status, data, _ = await anonymous.call(method.upper(), path.replace("{meeting_id}", "1"))
        assert status == 401 and is_error(data, "unauthorized"), (method, path)


async def test_meeting_round_trip(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    district(site)
    chair = await client(site, browsers, "ct-a")

    # create: 201, times back in +07:00, the version to send back
    status, data, _ = await chair.call("POST", "/meetings", new_meeting())
    assert status == 201, data
    created = data["meeting"]
    the_id = created["id"]
    assert data["warnings"] == [] and created["version"] == 1 and created["can_edit"] is True
    assert created["start"] == "2030-01-07T08:00:00+07:00" and created["status"] == "scheduled"
    assert [p["code"] for p in created["points"]] == ["p-a1", "p-a2"]
    assert created["agenda"] == [
        {"title": "Báo cáo", "presenter": "Văn phòng", "presenter_user": None}
    ]

    # a double booking of the chair is a warning, not an error
    status, data, _ = await chair.call(
        "POST", "/meetings", new_meeting(title="<b>Trùng</b>'; DROP TABLE meetings;--", points=[])
    )
    assert status == 201 and data["warnings"][0]["kind"] == "chair"
    assert data["warnings"][0]["meeting_id"] == the_id
    assert data["meeting"]["title"] == "<b>Trùng</b>'; DROP TABLE meetings;--"
    clash = data["meeting"]["id"]

    # get, list with filters
    status, data, _ = await chair.call("GET", f"/meetings/{the_id}")
    assert (
        status == 200 and data["title"] == "Giao ban tuần" and data["notes"] == "Mang theo số liệu"
    )
    status, data, _ = await chair.call("GET", "/meetings?from=2030-01-07&to=2030-01-07")
    assert status == 200 and [m["id"] for m in data] == [the_id, clash]
    status, data, _ = await chair.call("GET", "/meetings?from=2030-01-08&to=2030-01-14")
    assert status == 200 and data == []
    status, data, _ = await chair.call(
        "GET", "/meetings?from=2030-01-07&to=2030-01-07&unit=huyen-b"
    )
    assert status == 422 and data["error"] == "unknown-unit" and data["field"] == "unit"
    status, data, _ = await chair.call("GET", "/meetings?from=2030-02-31")
    assert status == 422 and data["error"] == "invalid-date" and data["field"] == "from"

    # update with the version; a stale version is 409 and writes nothing
    status, data, _ = await chair.call(
        "PATCH",
        f"/meetings/{the_id}",
        {"version": 1, "start": "2030-01-07T09:00:00+07:00", "end": "2030-01-07T10:00:00+07:00"},
    )
    assert status == 200, data
    assert (
        data["meeting"]["version"] == 2 and data["meeting"]["start"] == "2030-01-07T09:00:00+07:00"
    )
    status, data, _ = await chair.call(
        "PATCH", f"/meetings/{the_id}", {"version": 1, "title": "Cũ"}
    )
    assert status == 409 and is_error(data, "conflict-stale")
    status, data, _ = await chair.call("GET", f"/meetings/{the_id}")
    assert data["title"] == "Giao ban tuần" and data["version"] == 2

    # field errors from the services
    for body, code, field in (
        (new_meeting(start="2030-01-07T08:00:00"), "time-no-zone", "start"),
        (new_meeting(start="2030-02-31T08:00:00+07:00"), "invalid-time", "start"),
        (new_meeting(end="2030-01-07T07:00:00+07:00"), "end-before-start", "end"),
        (new_meeting(points=["p-a1", "khong-co"]), "unknown-point", "points"),
        (new_meeting(points=["p-b1"]), "unknown-point", "points"),  # another district's
        (new_meeting(chair="ct-a2"), "chair-not-self", "chair"),
        (new_meeting(unit="huyen-b"), "unknown-unit", "unit"),
        (
            new_meeting(agenda=[{"title": "Báo cáo", "presenter_user": "tk-b"}]),
            "unknown-presenter",
            "agenda",
        ),
    ):
        status, data, _ = await chair.call("POST", "/meetings", body)
        assert status == 422 and data["error"] == code and data.get("field") == field, data
    # a presenting account of the chair's units (as `@user` on the command line)
    status, data, _ = await chair.call(
        "PATCH",
        f"/meetings/{the_id}",
        {"version": 2, "agenda": [{"title": "Tài chính", "presenter_user": "tk-a"}]},
    )
    assert status == 200, data
    shown = site.user("tk-a").display_name
    assert data["meeting"]["agenda"] == [
        {"title": "Tài chính", "presenter": shown, "presenter_user": "tk-a"}
    ]
    status, data, _ = await chair.call("POST", "/meetings", new_meeting(extra=1))
    assert status == 422 and data["error"] == "invalid"
    status, data, _ = await chair.call(
        "POST", "/meetings", raw=b"{not json", **{"Content-Type": "application/json"}
    )
    assert status == 400 and data["error"] == "bad-json"
    status, data, _ = await chair.call("GET", "/meetings/987654")
    assert status == 404 and data["error"] == "not-found"

    # invitations and answers, attendance
    status, data, _ = await chair.call("GET", f"/meetings/{the_id}/invitations")
    assert status == 200 and [(i["point"], i["answer"]) for i in data] == [
        ("p-a1", "pending"),
        ("p-a2", "pending"),
    ]
    at = datetime(2030, 1, 7, 2, 1, tzinfo=UTC)

    def joined(session: Any) -> None:
        attendance.record_event(
            session, the_id, identity="p-a1", participant_id="a", kind="join", at=at, role="point"
        )
        attendance.record_event(
            session,
            the_id,
            identity="p-a1",
            participant_id="a",
            kind="leave",
            at=at + timedelta(minutes=30),
            role="point",
        )

    site.db(joined)
    status, data, _ = await chair.call("GET", f"/meetings/{the_id}/attendance")
    assert status == 200
    presence = {p["identity"]: p for p in data["presence"]}
    assert presence["p-a1"]["seconds"] == 1800 and presence["p-a2"]["seconds"] == 0
    assert presence["p-a1"]["first_join"] == "2030-01-07T09:01:00+07:00"
    assert [e["kind"] for e in data["events"]] == ["join", "leave"]

    # cancel: stale version refused, then done; a cancelled meeting cannot change
    status, data, _ = await chair.call("POST", f"/meetings/{the_id}/cancel", {"version": 1})
    assert status == 409 and data["error"] == "conflict-stale"
    status, data, _ = await chair.call("POST", f"/meetings/{the_id}/cancel", {"version": 3})
    assert status == 200 and data["status"] == "cancelled"
    status, data, _ = await chair.call("PATCH", f"/meetings/{the_id}", {"version": 4, "title": "x"})
    assert status == 409 and data["error"] == "meeting-closed"
    status, data, _ = await chair.call(
        "GET", "/meetings?from=2030-01-07&to=2030-01-07&cancelled=true"
    )
    assert {m["id"]: m["status"] for m in data} == {the_id: "cancelled", clash: "scheduled"}

    # series: every Monday 08:00, the first 8 weeks materialized
    status, data, _ = await chair.call(
        "POST", "/series", {**new_meeting(points=["p-a2"]), "rrule": "FREQ=WEEKLY;BYDAY=MO"}
    )
    assert status == 201, data
    assert data["rrule"] == "FREQ=WEEKLY;BYDAY=MO" and len(data["meetings"]) >= 8
    starts = [m["start"] for m in data["meetings"][:2]]
    assert starts == ["2030-01-07T08:00:00+07:00", "2030-01-14T08:00:00+07:00"]
    status, data, _ = await chair.call("POST", "/series", {**new_meeting(), "rrule": "FREQ=NEVER"})
    assert status == 422 and data["error"] == "bad-rrule" and data["field"] == "rrule"


async def test_meeting_api_access(site: Site, browsers: list[Browser]) -> None:
    district(site)
    now = datetime.now(UTC)
    mine = schedule(site, "Của chủ tịch A", now + timedelta(hours=3), 60, "ct-a", ("p-a1",))
    deputy = schedule(site, "Của phó chủ tịch", now + timedelta(hours=3), 60, "ct-a2", ("p-a2",))
    chair: Client = await client(site, browsers, "ct-a")
    other_chair = await client(site, browsers, "ct-a2")
    secretary = await client(site, browsers, "tk-a")
    operator = await client(site, browsers, "vh-a1")
    admin = await client(site, browsers, "qt-a")
    outsider = await client(site, browsers, "tk-b")
    today = now.astimezone(ZONE).date().isoformat()
    tomorrow = (now.astimezone(ZONE) + timedelta(days=1)).date().isoformat()
    window = f"/meetings?from={today}&to={tomorrow}"

    async def ids(who: Client) -> set[int]:
        status, data, _ = await who.call("GET", window)
        assert status == 200, data
        return {m["id"] for m in data}

    assert await ids(chair) == {mine}
    assert await ids(secretary) == {mine, deputy}
    assert await ids(admin) == {mine, deputy}
    assert await ids(operator) == {mine}
    assert await ids(outsider) == set()

    # seeing
    status, data, _ = await secretary.call("GET", f"/meetings/{deputy}")
    assert status == 200 and data["can_edit"] is False
    status, data, _ = await operator.call("GET", f"/meetings/{deputy}")
    assert status == 404
    status, data, _ = await operator.call("GET", f"/meetings/{mine}/invitations")
    assert status == 403 and data["error"] == "forbidden"
    for path in (
        f"/meetings/{mine}",
        f"/meetings/{mine}/invitations",
        f"/meetings/{mine}/attendance",
    ):
        status, data, _ = await outsider.call("GET", path)
        assert status == 404 and data["error"] == "not-found", path

    # changing: the meeting's chair and the admin, nobody else
    change = {"version": 1, "notes": "đổi"}
    status, data, _ = await secretary.call("PATCH", f"/meetings/{mine}", change)
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await other_chair.call("PATCH", f"/meetings/{mine}", change)
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await other_chair.call("POST", f"/meetings/{mine}/invitations/send")
    assert status == 403
    status, data, _ = await operator.call("POST", "/meetings", new_meeting())
    assert status == 403
    status, data, _ = await outsider.call("PATCH", f"/meetings/{mine}", change)
    assert status == 403  # a secretary: refused by role before the meeting is looked up
    chair_b = await client(site, browsers, "ct-b")
    status, data, _ = await chair_b.call("PATCH", f"/meetings/{mine}", change)
    assert status == 404
    status, data, _ = await chair_b.call("POST", f"/meetings/{mine}/cancel", {"version": 1})
    assert status == 404
    status, data, _ = await admin.call("PATCH", f"/meetings/{mine}", change)
    assert status == 200 and data["meeting"]["notes"] == "đổi"
    status, data, _ = await admin.call(
        "POST", "/meetings", new_meeting(chair="ct-a2", points=["p-a2"])
    )
    assert status == 201 and data["meeting"]["chair"] == "ct-a2"
    status, data, _ = await admin.call("POST", "/meetings", new_meeting(chair="ct-b"))
    assert status == 422 and data["field"] == "chair"

    # sending without a mail server: reported per point, not a crash
    status, data, _ = await chair.call("POST", f"/meetings/{mine}/invitations/send")
    assert status == 200 and data["sent"] == [] and set(data["failed"]) == {"p-a1"}
    assert "not configured" in data["failed"]["p-a1"]
    assert site.db(lambda s: svc.get_meeting(s, mine).invitations[0].last_error)
