"""Organisation pages for administrators: units, points, users and the CSV import.

The scoped services (units, points, users in the actor's scope, the CSV import) live in
:mod:`conference.domain.admin_services`, shared with the JSON API.

Pages (role admin; see :func:`conference.web.auth.page` for the session/role/CSRF checks)
------------------------------------------------------------------------------------------
``/admin/units`` (tree + new unit), ``/admin/points`` (list), ``/admin/points/new``,
``/admin/points/{code}`` (edit), ``/admin/users`` (list), ``/admin/users/new``,
``/admin/users/{username}`` (reset password, disable/enable, sign out everywhere: each ends
the account's sessions and API tokens), ``/admin/import`` (CSV upload,
all rows or none, the failing line reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from conference.domain.admin_services import (
    Invalid,
    Message,
    NotFound,
    PointView,
    UnitView,
    UserView,
    create_point,
    create_unit,
    create_user,
    get_point,
    get_unit,
    get_user,
    import_units,
    list_points,
    list_units,
    list_users,
    message_text,
    sign_out_everywhere,
    update_point,
    update_user,
)
from conference.domain.models import BANDWIDTH_PROFILES, ROLES, UNIT_KINDS
from conference.web.auth import (
    CurrentUser,
    add_nav_link,
    database,
    page,
    render_page,
)
from conference.web.site import language, translator

__all__ = [
    "Invalid",
    "NotFound",
    "PointView",
    "UnitView",
    "UserView",
    "create_point",
    "create_unit",
    "create_user",
    "get_point",
    "get_unit",
    "get_user",
    "import_units",
    "list_points",
    "list_units",
    "list_users",
    "setup_admin",
    "update_point",
    "update_user",
]

ADMIN = ("admin",)
# --- pages --------------------------------------------------------------------------------


def _messages(request: web.Request, errors: Mapping[str, Message]) -> dict[str, str]:
    strings = translator(request.app, language(request))
    return {field: message_text(strings, key, params) for field, (key, params) in errors.items()}


def _form(form: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: form[k] for k in keys if isinstance(form.get(k), str)}


def _not_found(request: web.Request, user: CurrentUser) -> web.Response:
    return render_page(
        request, "auth_forbidden.html", user, status=404, message_key="admin.notfound"
    )


async def _units_page(
    request: web.Request,
    user: CurrentUser,
    status: int = 200,
    errors: Mapping[str, Message] | None = None,
    values: Mapping[str, Any] | None = None,
) -> web.Response:
    units = await database(request).run(lambda s: list_units(s, user))
    return render_page(
        request,
        "admin_units.html",
        user,
        status,
        units=units,
        kinds=UNIT_KINDS,
        errors=_messages(request, errors or {}),
        values=values or {},
        created=request.query.get("created", ""),
    )


@page(ADMIN)
async def units_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _units_page(request, user)


@page(ADMIN)
async def units_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    form = _form(await request.post(), "code", "name", "kind", "parent")
    try:
        unit = await database(request).run(lambda s: create_unit(s, user, form))
    except Invalid as exc:
        return await _units_page(request, user, 400, exc.errors, form)
    raise web.HTTPSeeOther(f"/admin/units?created={unit.code}")


@page(ADMIN)
async def points_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    points = await database(request).run(lambda s: list_points(s, user))
    return render_page(
        request, "admin_points.html", user, points=points, saved=request.query.get("saved", "")
    )


_POINT_FIELDS = ("code", "name", "unit", "email", "phone", "bandwidth")


async def _point_form(
    request: web.Request,
    user: CurrentUser,
    *,
    editing: str | None,
    values: Mapping[str, Any],
    status: int = 200,
    errors: Mapping[str, Message] | None = None,
) -> web.Response:
    units = await database(request).run(lambda s: list_units(s, user))
    return render_page(
        request,
        "admin_point_form.html",
        user,
        status,
        editing=editing,
        values=values,
        units=units,
        profiles=list(BANDWIDTH_PROFILES),
        errors=_messages(request, errors or {}),
    )


@page(ADMIN)
async def point_new_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _point_form(request, user, editing=None, values={"active": True})


@page(ADMIN)
async def point_new_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    form = await request.post()
    data = _form(form, *_POINT_FIELDS)
    data["active"] = form.get("active") == "on"
    try:
        point = await database(request).run(lambda s: create_point(s, user, data))
    except Invalid as exc:
        return await _point_form(
            request, user, editing=None, values=data, status=400, errors=exc.errors
        )
    raise web.HTTPSeeOther(f"/admin/points?saved={point.code}")


@page(ADMIN)
async def point_edit_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    code = request.match_info["code"]
    try:
        point = await database(request).run(lambda s: get_point(s, user, code))
    except NotFound:
        return _not_found(request, user)
    return await _point_form(request, user, editing=code, values=point.to_dict())


@page(ADMIN)
async def point_edit_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    code = request.match_info["code"]
    form = await request.post()
    data = _form(form, "name", "unit", "email", "phone", "bandwidth")
    data["active"] = form.get("active") == "on"
    try:
        await database(request).run(lambda s: update_point(s, user, code, data))
    except NotFound:
        return _not_found(request, user)
    except Invalid as exc:
        values = {**data, "code": code}
        return await _point_form(
            request, user, editing=code, values=values, status=400, errors=exc.errors
        )
    raise web.HTTPSeeOther(f"/admin/points?saved={code}")


@page(ADMIN)
async def users_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    users = await database(request).run(lambda s: list_users(s, user))
    return render_page(
        request, "admin_users.html", user, users=users, saved=request.query.get("saved", "")
    )


async def _user_form(
    request: web.Request,
    user: CurrentUser,
    values: Mapping[str, Any],
    status: int = 200,
    errors: Mapping[str, Message] | None = None,
) -> web.Response:
    def load(session: Session) -> tuple[list[UnitView], list[PointView]]:
        return list_units(session, user), list_points(session, user)

    units, points = await database(request).run(load)
    return render_page(
        request,
        "admin_user_form.html",
        user,
        status,
        values=values,
        units=units,
        points=points,
        roles=ROLES,
        errors=_messages(request, errors or {}),
    )


@page(ADMIN)
async def user_new_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _user_form(request, user, {})


@page(ADMIN)
async def user_new_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    form = await request.post()
    fields = ("username", "display_name", "role", "unit", "point", "password", "repeat")
    data = {k: v for k, v in _form(form, *fields).items()}
    try:
        made = await database(request).run(lambda s: create_user(s, user, data))
    except Invalid as exc:
        values = {k: v for k, v in data.items() if k not in ("password", "repeat")}
        return await _user_form(request, user, values, 400, exc.errors)
    raise web.HTTPSeeOther(f"/admin/users?saved={made.username}")


async def _user_page(
    request: web.Request,
    user: CurrentUser,
    username: str,
    status: int = 200,
    errors: Mapping[str, Message] | None = None,
    done: str = "",
) -> web.Response:
    try:
        target = await database(request).run(lambda s: get_user(s, user, username))
    except NotFound:
        return _not_found(request, user)
    return render_page(
        request,
        "admin_user.html",
        user,
        status,
        target=target,
        errors=_messages(request, errors or {}),
        done=done or request.query.get("done", ""),
    )


@page(ADMIN)
async def user_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return await _user_page(request, user, request.match_info["username"])


@page(ADMIN)
async def user_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    """One form per action: ``action`` = ``password`` (reset), ``active`` (dis/enable) or
    ``signout`` (end every session and API token of the account)."""
    username = request.match_info["username"]
    form = await request.post()
    action = str(form.get("action") or "")
    if action == "signout":
        try:
            await database(request).run(lambda s: sign_out_everywhere(s, user, username))
        except NotFound:
            return _not_found(request, user)
        raise web.HTTPSeeOther(f"/admin/users/{username}?done={action}")
    if action == "password":
        data: dict[str, Any] = _form(form, "password", "repeat")
        data.setdefault("password", "")
    elif action == "active":
        data = {"active": form.get("active") == "on"}
    else:
        data = {}
    try:
        await database(request).run(lambda s: update_user(s, user, username, data))
    except NotFound:
        return _not_found(request, user)
    except Invalid as exc:
        return await _user_page(request, user, username, 400, exc.errors)
    raise web.HTTPSeeOther(f"/admin/users/{username}?done={action}")


@page(ADMIN)
async def import_get(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    return render_page(request, "admin_import.html", user, errors={}, report=None)


@page(ADMIN)
async def import_post(request: web.Request, user: CurrentUser) -> web.StreamResponse:
    form = await request.post()
    upload = form.get("file")
    data = upload.file.read() if isinstance(upload, web.FileField) else b""
    if not data:
        errors = _messages(request, {"file": ("admin.err.import_empty", {})})
        return render_page(request, "admin_import.html", user, 400, errors=errors, report=None)
    try:
        report = await database(request).run(lambda s: import_units(s, user, data))
    except Invalid as exc:
        errors = _messages(request, exc.errors)
        return render_page(request, "admin_import.html", user, 400, errors=errors, report=None)
    return render_page(request, "admin_import.html", user, errors={}, report=report)


def setup_admin(app: web.Application) -> None:
    """Add the organisation pages and their links (call after ``setup_auth``)."""
    app.router.add_get("/admin/units", units_get)
    app.router.add_post("/admin/units", units_post)
    app.router.add_get("/admin/points", points_get)
    app.router.add_get("/admin/points/new", point_new_get)
    app.router.add_post("/admin/points/new", point_new_post)
    app.router.add_get("/admin/points/{code}", point_edit_get)
    app.router.add_post("/admin/points/{code}", point_edit_post)
    app.router.add_get("/admin/users", users_get)
    app.router.add_get("/admin/users/new", user_new_get)
    app.router.add_post("/admin/users/new", user_new_post)
    app.router.add_get("/admin/users/{username}", user_get)
    app.router.add_post("/admin/users/{username}", user_post)
    app.router.add_get("/admin/import", import_get)
    app.router.add_post("/admin/import", import_post)
    for href, key in (
        ("/admin/units", "admin.nav.units"),
        ("/admin/points", "admin.nav.points"),
        ("/admin/users", "admin.nav.users"),
        ("/admin/import", "admin.nav.import"),
    ):
        add_nav_link(app, href, key, ADMIN)
