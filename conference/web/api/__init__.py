"""The JSON API (``/api/v1/``): a small registry of operations and its OpenAPI 3.1 document.

Adding an endpoint (e.g. the meeting API, in its own module)
-------------------------------------------------------------
::

    from conference.web.api import API, ApiCall, ApiError, ref

    MEETING = API.schema("Meeting", {"type": "object", "properties": {...}, "required": [...]})

    @API.operation(
        "GET", "/meetings/{meeting_id}", summary="One meeting", tags=("meetings",),
        roles=("admin", "chair", "secretary"), response=MEETING, errors=(404,),
    )
    async def get_meeting(call: ApiCall) -> dict[str, Any]:
        meeting_id = call.params["meeting_id"]
        return await call.db(lambda s: ...)        # -> 200 with this JSON body

then add the module's name to :data:`API_MODULES` (``setup_api`` imports them so that their
decorators run, then adds every registered operation to the app).  The decorator takes
care of everything else, and the OpenAPI document (``GET /api/v1/openapi.json``) is built
from the same declarations, so it cannot drift from the code:

* authentication: ``Authorization: Bearer <API token>`` (:mod:`conference.web.auth`:
  audience ``conference-api``; never the session cookie, so no CSRF); missing -> 401
  ``unauthorized``, bad or expired -> 401 ``invalid-token`` (both with
  ``WWW-Authenticate: Bearer``); a role not in ``roles`` -> 403 ``forbidden``.
  ``auth=False`` makes an operation public.
* the request body: must be JSON (else 400 ``bad-json``) and valid against ``request``
  (else 422 ``invalid`` with ``fields``: field -> message); validated by
  :func:`validate`, a small JSON Schema subset (type, enum, const, properties, required,
  additionalProperties, items, min/maxItems, min/maxLength, pattern, minimum, maximum,
  ``$ref`` to registered schemas).
* ``query``: declared query parameters (:class:`Query`), converted and checked.
* errors: raise :class:`ApiError` (status, code, message, fields); the domain's refusals
  (:class:`conference.core.errors.Refused`: the meeting services' ``SchedulingError``, the
  minutes' ``MinutesError``, the admin services' ``Invalid``) become their status (bad
  input 422), with ``field`` or ``fields``; ``NotFound`` and ``Forbidden`` 404 and 403.
  This is the API's one mapping of domain errors to HTTP.

Every error body is ``{"error": code, "message": text}`` (plus ``fields`` for 409/422);
messages are English.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.orm import Session

from conference import __version__
from conference.core import jsontext
from conference.core.errors import Forbidden, NotFound, Refused, http_status
from conference.web.auth import (
    API_AUDIENCE,
    CurrentUser,
    database,
    user_from_token,
)
from conference.web.site import translator

__all__ = [
    "API",
    "API_MODULES",
    "ApiCall",
    "ApiError",
    "ApiRegistry",
    "Operation",
    "Query",
    "Reply",
    "setup_api",
    "validate",
]

T = TypeVar("T")
PREFIX = "/api/v1"
#: Modules whose import registers operations on `API` (this one first).
API_MODULES: list[str] = [
    "conference.web.api.admin",
    "conference.web.api.meetings",
    "conference.web.api.links",
    "conference.web.api.library",
    "conference.web.api.minutes",
]
_NO_STORE = {"Cache-Control": "no-store"}
_STATUS_TEXT = {
    400: "Bad request: the body is not JSON",
    401: "Missing, invalid or expired bearer token",
    403: "The token's user may not do this",
    404: "Not found (or outside the user's units)",
    409: "Conflict: the code or name is already used, or the meeting changed (stale version)",
    422: "The body does not match the schema, or a field is invalid",
    429: "Too many failed sign-ins: wait (Retry-After)",
}


class ApiError(Exception):
    """An error answer: ``{"error": code, "message": message, "fields"?: {...}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Mapping[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})
        self.field = field

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.fields:
            body["fields"] = self.fields
        headers = dict(_NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="conference"'
        return web.json_response(body, status=self.status, headers=headers)


@dataclass(frozen=True)
class Reply:
    """A success answer with another status than the operation's default, or no body."""

    status: int
    body: Any = None


@dataclass(frozen=True)
class Query:
    """A query parameter: ``type`` is "string", "integer" or "boolean"."""

    name: str
    description: str
    type: str = "string"
    required: bool = False


@dataclass
class ApiCall:
    """What a handler gets: the request, the user, the validated body, path and query."""

    request: web.Request
    user: CurrentUser | None
    body: Any
    params: dict[str, str]
    query: dict[str, Any]

    @property
    def actor(self) -> CurrentUser:
        """The authenticated user (operations with ``auth=True`` always have one)."""
        assert self.user is not None
        return self.user

    async def db(self, function: Callable[[Session], T]) -> T:
        """Run `function(session)` in a transaction, in a worker thread."""
        return await database(self.request).run(function)


ApiHandler = Callable[[ApiCall], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: ApiHandler
    summary: str
    operation_id: str
    roles: tuple[str, ...] = ()
    auth: bool = True
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    tags: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.path)


# --- validation -----------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(
    value: Any, schema: Mapping[str, Any], schemas: Mapping[str, Any] | None = None, path: str = ""
) -> list[tuple[str, str]]:
    """Check `value` against `schema` (the subset in the module docstring).

    Returns ``(path, message)`` pairs, empty when valid; a path is ``name`` or ``a.b[2]``.
    """
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        target = (schemas or {}).get(name)
        if target is None:
            raise KeyError(f"unknown schema {schema['$ref']}")
        return validate(value, target, schemas, path)
    where = path or "body"
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_TYPES[k](value) for k in names):
            return [(where, f"must be of type {' or '.join(names)}")]
    if "const" in schema and value != schema["const"]:
        return [(where, f"must be {schema['const']!r}")]
    if "enum" in schema and value not in schema["enum"]:
        return [(where, "must be one of " + ", ".join(map(str, schema["enum"])))]
    problems: list[tuple[str, str]] = []
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append((where, f"must have at least {schema['minLength']} characters"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append((where, f"must have at most {schema['maxLength']} characters"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append((where, f"must match {schema['pattern']}"))
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append((where, f"must be at least {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append((where, f"must be at most {schema['maximum']}"))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append((where, f"must have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append((where, f"must have at most {schema['maxItems']} items"))
        if "items" in schema:
            for index, item in enumerate(value):
                problems += validate(item, schema["items"], schemas, f"{path}[{index}]")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append((_join(path, name), "is required"))
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], schemas, _join(path, name))
            elif extra is False:
                problems.append((_join(path, name), "is not a known field"))
            elif isinstance(extra, Mapping):
                problems += validate(item, extra, schemas, _join(path, name))
    return problems


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --- the registry -----------------------------------------------------------------------------


class ApiRegistry:
    """Operations and named schemas of one API version (see the module docstring)."""

    def __init__(self, prefix: str = PREFIX, title: str = "conference API") -> None:
        self.prefix = prefix
        self.title = title
        self.operations: list[Operation] = []
        self.schemas: dict[str, dict[str, Any]] = {}

    def schema(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Register a named schema (``components.schemas``); returns a ``$ref`` to it."""
        if name in self.schemas and self.schemas[name] != schema:
            raise ValueError(f"schema {name!r} registered twice")
        self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def operation(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        roles: Iterable[str] = (),
        auth: bool = True,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        status: int = 200,
        query: Iterable[Query] = (),
        tags: Iterable[str] = (),
        errors: Iterable[int] = (),
        description: str = "",
    ) -> Callable[[ApiHandler], ApiHandler]:
        """Declare an operation; `path` is relative to the prefix (``/units/{code}``)."""

        def register(handler: ApiHandler) -> ApiHandler:
            method_upper = method.upper()
            if any(o.method == method_upper and o.path == path for o in self.operations):
                raise ValueError(f"{method_upper} {path} registered twice")
            self.operations.append(
                Operation(
                    method=method_upper,
                    path=path,
                    handler=handler,
                    summary=summary,
                    operation_id=handler.__name__,
                    roles=tuple(roles),
                    auth=auth,
                    request=request,
                    response=response,
                    status=status,
                    query=tuple(query),
                    tags=tuple(tags),
                    errors=tuple(errors),
                    description=description,
                )
            )
            return handler

        return register

    # --- serving ---

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, self.prefix + op.path, self._wrap(op))
        document = self.openapi()

        async def openapi(request: web.Request) -> web.Response:
            return web.json_response(document, dumps=_dumps)

        app.router.add_get(self.prefix + "/openapi.json", openapi)

    def _wrap(self, op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                call = await self._call(op, request)
                result = await op.handler(call)
            except ApiError as exc:
                return exc.response()
            except NotFound as exc:  # any domain's (a meeting, a unit...): one mapping
                return ApiError(404, "not-found", exc.message).response()
            except Forbidden as exc:
                return ApiError(403, "forbidden", exc.message).response()
            except Refused as exc:  # any domain's refusal (meetings, minutes, admin): one mapping
                fields = exc.fields(translator(request.app, "en"))
                message = "; ".join(f"{k}: {v}" for k, v in fields.items()) or exc.message
                return ApiError(http_status(exc), exc.code, message, fields, exc.field).response()
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                if result.body is None:
                    return web.Response(status=result.status, headers=_NO_STORE)
                return web.json_response(
                    result.body, status=result.status, headers=_NO_STORE, dumps=_dumps
                )
            return web.json_response(result, status=op.status, headers=_NO_STORE, dumps=_dumps)

        handle.__name__ = op.operation_id
        return handle

    async def _call(self, op: Operation, request: web.Request) -> ApiCall:
        user = None
        if op.auth:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if not header:
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <API token>")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "invalid-token", "the Authorization header must be Bearer")
            user = await user_from_token(request.app, token.strip(), API_AUDIENCE)
            if user is None:
                raise ApiError(401, "invalid-token", "the token is invalid or has expired")
            if op.roles and user.role not in op.roles:
                raise ApiError(403, "forbidden", f"this needs the role {' or '.join(op.roles)}")
        body: Any = None
        if op.request is not None:
            try:
                raw = await request.read()
                body = jsontext.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "bad-json", "the body is not valid JSON") from None
            if body is None:
                raise ApiError(400, "bad-json", "a JSON body is required")
            problems = validate(body, op.request, self.schemas)
            if problems:
                fields = {where: message for where, message in problems}
                message = "; ".join(f"{k}: {v}" for k, v in fields.items())
                raise ApiError(422, "invalid", message, fields)
        query: dict[str, Any] = {}
        for param in op.query:
            raw_value = request.query.get(param.name)
            if raw_value is None:
                if param.required:
                    raise ApiError(422, "invalid", f"query parameter {param.name} is required")
                continue
            query[param.name] = _convert(param, raw_value)
        return ApiCall(request, user, body, dict(request.match_info), query)

    # --- the document ---

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every registered operation."""
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            entry: dict[str, Any] = {
                "operationId": op.operation_id,
                "summary": op.summary,
                "tags": list(op.tags),
                "security": [{"bearer": []}] if op.auth else [],
            }
            if op.description:
                entry["description"] = op.description
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in op.path_params
            ]
            parameters += [
                {
                    "name": q.name,
                    "in": "query",
                    "required": q.required,
                    "description": q.description,
                    "schema": {"type": q.type},
                }
                for q in op.query
            ]
            if parameters:
                entry["parameters"] = parameters
            if op.request is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": op.request}},
                }
            success: dict[str, Any] = {"description": "OK" if op.status == 200 else "Created"}
            if op.response is not None:
                success["content"] = {"application/json": {"schema": op.response}}
            responses: dict[str, Any] = {str(op.status): success}
            codes = set(op.errors)
            if op.auth:
                codes |= {401} | ({403} if op.roles else set())
            if op.request is not None:
                codes |= {400, 422}
            for code in sorted(codes):
                responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
            entry["responses"] = responses
            paths.setdefault(op.path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {
                "title": self.title,
                "version": __version__,
                "description": "JSON API of the conference server: see docs/PROTOCOL.md. "
                "Authenticate with Authorization: Bearer <API token> (POST /tokens).",
            },
            "servers": [{"url": self.prefix}],
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
                "schemas": {**self.schemas, "Error": ERROR_SCHEMA},
                "responses": {
                    f"E{code}": {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                    for code, text in _STATUS_TEXT.items()
                },
            },
        }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "stable code, e.g. invalid-token"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        "field": {"type": "string", "description": "the input field the error is about"},
    },
    "required": ["error", "message"],
}


def _convert(param: Query, value: str) -> Any:
    if param.type == "integer":
        try:
            return int(value)
        except ValueError:
            raise ApiError(
                422, "invalid", f"query parameter {param.name} must be an integer"
            ) from None
    if param.type == "boolean":
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ApiError(422, "invalid", f"query parameter {param.name} must be true or false")
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


#: The version 1 API.
API = ApiRegistry()


def register_modules() -> None:
    """Import :data:`API_MODULES`, so that their operations are on :data:`API`."""
    for name in API_MODULES:
        importlib.import_module(name)


def setup_api(app: web.Application, registry: ApiRegistry = API) -> None:
    """Import :data:`API_MODULES` (their operations register) and add every operation."""
    register_modules()
    registry.install(app)


# Last: the other modules import this one.  Importing conference.web.api gives the whole API
# (what the server serves), not just the framework.
register_modules()
