"""The JSON API's own operations: API tokens, whoami, units, points and users.

Registered on :data:`conference.web.api.API` (listed in ``API_MODULES``); the rules are the
scoped services of conference/domain/admin_services.py, shared with the admin pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from conference.appkeys import SETTINGS
from conference.domain.admin_services import (
    create_point,
    create_unit,
    create_user,
    get_point,
    get_unit,
    get_user,
    list_points,
    list_units,
    list_users,
    sign_out_everywhere,
    update_point,
    update_user,
)
from conference.domain.models import BANDWIDTH_PROFILES, ROLES, UNIT_KINDS, User
from conference.web.api import API, ApiCall, ApiError, Query
from conference.web.auth import check_password, create_api_token

# --- schemas -----------------------------------------------------------------------------------

_CODE = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_NULLABLE_TEXT = {"type": ["string", "null"], "maxLength": 254}

USER = API.schema(
    "User",
    {
        "type": "object",
        "properties": {
            "username": {"type": "string"},
            "display_name": {"type": "string"},
            "role": {"enum": list(ROLES)},
            "unit": {"type": ["string", "null"], "description": "unit code; null: every unit"},
            "unit_name": {"type": ["string", "null"]},
            "point": {"type": ["string", "null"], "description": "an operator's point code"},
            "active": {"type": "boolean"},
            "last_login_at": {"type": ["string", "null"], "format": "date-time"},
        },
        "required": ["username", "display_name", "role", "unit", "point", "active"],
    },
)
WHOAMI = API.schema(
    "Whoami",
    {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "display_name": {"type": "string"},
            "role": {"enum": list(ROLES)},
            "unit": {"type": ["string", "null"]},
            "unit_name": {"type": ["string", "null"]},
            "point": {"type": ["string", "null"]},
            "expires_at": {"type": "string", "format": "date-time"},
        },
        "required": ["id", "username", "role", "unit", "expires_at"],
    },
)
UNIT = API.schema(
    "Unit",
    {
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"enum": list(UNIT_KINDS)},
            "parent": {"type": ["string", "null"], "description": "parent unit code"},
        },
        "required": ["code", "name", "kind", "parent"],
    },
)
NEW_UNIT = API.schema(
    "NewUnit",
    {
        "type": "object",
        "properties": {
            "code": _CODE,
            "name": _NAME,
            "kind": {"enum": list(UNIT_KINDS)},
            "parent": {"type": ["string", "null"]},
        },
        "required": ["code", "name", "kind"],
        "additionalProperties": False,
    },
)
POINT = API.schema(
    "Point",
    {
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "name": {"type": "string"},
            "unit": {"type": "string"},
            "unit_name": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "phone": {"type": ["string", "null"]},
            "bandwidth": {"enum": list(BANDWIDTH_PROFILES)},
            "active": {"type": "boolean"},
        },
        "required": ["code", "name", "unit", "bandwidth", "active"],
    },
)
_POINT_FIELDS: dict[str, Any] = {
    "name": _NAME,
    "unit": {"type": "string"},
    "email": _NULLABLE_TEXT,
    "phone": {"type": ["string", "null"], "maxLength": 32},
    "bandwidth": {"enum": list(BANDWIDTH_PROFILES)},
    "active": {"type": "boolean"},
}
NEW_POINT = API.schema(
    "NewPoint",
    {
        "type": "object",
        "properties": {"code": _CODE, **_POINT_FIELDS},
        "required": ["code", "name", "unit"],
        "additionalProperties": False,
    },
)
POINT_CHANGE = API.schema(
    "PointChange",
    {
        "type": "object",
        "properties": _POINT_FIELDS,
        "additionalProperties": False,
        "description": "only the fields present are changed; the code is fixed",
    },
)
NEW_USER = API.schema(
    "NewUser",
    {
        "type": "object",
        "properties": {
            "username": {"type": "string", "minLength": 2, "maxLength": 64},
            "display_name": _NAME,
            "role": {"enum": list(ROLES)},
            "unit": {"type": ["string", "null"]},
            "point": {"type": ["string", "null"]},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
        "required": ["username", "role", "password"],
        "additionalProperties": False,
    },
)
USER_CHANGE = API.schema(
    "UserChange",
    {
        "type": "object",
        "properties": {
            "display_name": _NAME,
            "active": {"type": "boolean"},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
        "additionalProperties": False,
        "description": "a new password, disabling or enabling the account ends the user's "
        "sessions and API tokens",
    },
)
TOKEN_REQUEST = API.schema(
    "TokenRequest",
    {
        "type": "object",
        "properties": {
            "username": {"type": "string", "minLength": 1, "maxLength": 64},
            "password": {"type": "string", "minLength": 1, "maxLength": 1024},
            "ttl_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
        },
        "required": ["username", "password"],
        "additionalProperties": False,
    },
)
TOKEN = API.schema(
    "Token",
    {
        "type": "object",
        "properties": {
            "token": {"type": "string"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "description": "seconds"},
        },
        "required": ["token", "token_type", "expires_in"],
    },
)


def _list_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": schema}


def _without_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in data.items()}


# --- operations -----------------------------------------------------------------------------

ADMIN = ("admin",)


@API.operation(
    "POST",
    "/tokens",
    summary="Exchange a username and password for an API token",
    auth=False,
    request=TOKEN_REQUEST,
    response=TOKEN,
    status=201,
    tags=("auth",),
    errors=(401, 429),
    description="Throttled like the login form. The token lasts ttl_minutes (default 60).",
)
async def create_token(call: ApiCall) -> Any:
    body = call.body
    result = await check_password(call.request, body["username"], body["password"])
    if result.user is None:
        if result.wait > 0:
            error = ApiError(429, "throttled", "too many failed sign-ins; try again later")
            response = error.response()
            response.headers["Retry-After"] = str(int(result.wait) + 1)
            return response
        raise ApiError(401, "bad-credentials", "wrong username or password")
    user: User = result.user
    ttl = timedelta(minutes=body.get("ttl_minutes", 60))
    token = create_api_token(call.request.app[SETTINGS].token_secret or "", user, ttl)
    return {"token": token, "token_type": "Bearer", "expires_in": int(ttl.total_seconds())}


@API.operation("GET", "/whoami", summary="The token's user", response=WHOAMI, tags=("auth",))
async def whoami(call: ApiCall) -> Any:
    return {"id": call.actor.id, **call.actor.to_dict()}


@API.operation(
    "GET",
    "/units",
    summary="The units the user sees (its unit and those below)",
    response=_list_of(UNIT),
    tags=("organisation",),
)
async def units_list(call: ApiCall) -> Any:
    units = await call.db(lambda s: list_units(s, call.actor))
    return [u.to_dict() for u in units]


@API.operation(
    "GET",
    "/units/{code}",
    summary="One unit",
    response=UNIT,
    tags=("organisation",),
    errors=(404,),
)
async def unit_get(call: ApiCall) -> Any:
    unit = await call.db(lambda s: get_unit(s, call.actor, call.params["code"]))
    return unit.to_dict()


@API.operation(
    "POST",
    "/units",
    summary="Add a unit (inside the admin's unit)",
    roles=ADMIN,
    request=NEW_UNIT,
    response=UNIT,
    status=201,
    tags=("organisation",),
    errors=(409,),
)
async def unit_create(call: ApiCall) -> Any:
    unit = await call.db(lambda s: create_unit(s, call.actor, _without_none(call.body)))
    return unit.to_dict()


@API.operation(
    "GET",
    "/points",
    summary="The meeting points the user sees",
    response=_list_of(POINT),
    query=(Query("active", "only active (true) or inactive (false) points", "boolean"),),
    tags=("organisation",),
)
async def points_list(call: ApiCall) -> Any:
    points = await call.db(lambda s: list_points(s, call.actor))
    active = call.query.get("active")
    return [p.to_dict() for p in points if active is None or p.active == active]


@API.operation(
    "GET",
    "/points/{code}",
    summary="One meeting point",
    response=POINT,
    tags=("organisation",),
    errors=(404,),
)
async def point_get(call: ApiCall) -> Any:
    point = await call.db(lambda s: get_point(s, call.actor, call.params["code"]))
    return point.to_dict()


@API.operation(
    "POST",
    "/points",
    summary="Add a meeting point",
    roles=ADMIN,
    request=NEW_POINT,
    response=POINT,
    status=201,
    tags=("organisation",),
    errors=(409,),
)
async def point_create(call: ApiCall) -> Any:
    point = await call.db(lambda s: create_point(s, call.actor, _without_none(call.body)))
    return point.to_dict()


@API.operation(
    "PATCH",
    "/points/{code}",
    summary="Change a meeting point",
    roles=ADMIN,
    request=POINT_CHANGE,
    response=POINT,
    tags=("organisation",),
    errors=(404,),
)
async def point_update(call: ApiCall) -> Any:
    code, data = call.params["code"], _without_none(call.body)
    point = await call.db(lambda s: update_point(s, call.actor, code, data))
    return point.to_dict()


@API.operation(
    "GET",
    "/users",
    summary="The accounts of the admin's units",
    roles=ADMIN,
    response=_list_of(USER),
    tags=("accounts",),
)
async def users_list(call: ApiCall) -> Any:
    users = await call.db(lambda s: list_users(s, call.actor))
    return [u.to_dict() for u in users]


@API.operation(
    "GET",
    "/users/{username}",
    summary="One account",
    roles=ADMIN,
    response=USER,
    tags=("accounts",),
    errors=(404,),
)
async def user_get(call: ApiCall) -> Any:
    user = await call.db(lambda s: get_user(s, call.actor, call.params["username"]))
    return user.to_dict()


@API.operation(
    "POST",
    "/users",
    summary="Add an account",
    roles=ADMIN,
    request=NEW_USER,
    response=USER,
    status=201,
    tags=("accounts",),
    errors=(409,),
)
async def user_create(call: ApiCall) -> Any:
    user = await call.db(lambda s: create_user(s, call.actor, _without_none(call.body)))
    return user.to_dict()


@API.operation(
    "PATCH",
    "/users/{username}",
    summary="Change an account: display name, active, password reset",
    roles=ADMIN,
    request=USER_CHANGE,
    response=USER,
    tags=("accounts",),
    errors=(404,),
)
async def user_update(call: ApiCall) -> Any:
    username, data = call.params["username"], dict(call.body)
    user = await call.db(lambda s: update_user(s, call.actor, username, data))
    return user.to_dict()


@API.operation(
    "POST",
    "/users/{username}/signout",
    summary="Sign an account out everywhere: its sessions and API tokens end",
    roles=ADMIN,
    response=USER,
    tags=("accounts",),
    errors=(404,),
    description="Every session cookie and API token of the account made until now is refused "
    "(the caller's own too, when it is the same account).",
)
async def user_signout(call: ApiCall) -> Any:
    username = call.params["username"]
    user = await call.db(lambda s: sign_out_everywhere(s, call.actor, username))
    return user.to_dict()
