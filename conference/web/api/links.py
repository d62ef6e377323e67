"""``GET /api/v1/meetings/{id}/links``: the points' join links without e-mail (audited).

The page is conference/web/pages/links.py; the links and the message come from
conference/domain/invitations.py (`point_links`, `share_text`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from conference.appkeys import SETTINGS
from conference.domain import invitations
from conference.domain.admission import CHAIR_SIDE_ROLES
from conference.domain.meeting_services import load_meeting
from conference.web.api import API, ApiCall
from conference.web.api.meetings import TAGS
from conference.web.secrets import log_links
from conference.web.site import translator

__all__ = ["LINKS", "meeting_links"]


LINKS = API.schema(
    "PointLinks",
    {
        "type": "object",
        "properties": {
            "links": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "point": {"type": "string"},
                        "name": {"type": "string"},
                        "email": {"type": ["string", "null"]},
                        "link": {"type": "string"},
                    },
                    "required": ["point", "name", "link"],
                },
            },
            "text": {"type": "string"},
        },
        "required": ["links", "text"],
    },
)


@API.operation(
    "GET",
    "/meetings/{meeting_id}/links",
    summary="Each invited point's join link, and a message to paste into a chat group",
    roles=CHAIR_SIDE_ROLES,
    response=LINKS,
    tags=TAGS,
    errors=(403, 404, 409),
    description="The links are secrets (whoever holds one joins as that point): only the "
    "chair's side of the meeting (chairs, secretaries, admins who may see it) gets them, and each call is written to the audit log. `lang` (vi, en) "
    "is the message's language (Vietnamese by default). 409 `meeting-closed` for a cancelled "
    "or ended meeting.",
)
async def meeting_links(call: ApiCall) -> Any:
    settings = call.request.app[SETTINGS]
    lang = call.request.query.get("lang", "vi")
    strings = translator(call.request.app, lang if lang in ("vi", "en") else "vi")

    def load(session: Session) -> dict[str, Any]:
        meeting = load_meeting(session, call.actor, call.params["meeting_id"])
        links = invitations.point_links(settings, meeting)
        return {
            "links": [
                {"point": x.point, "name": x.name, "email": x.email, "link": x.link} for x in links
            ],
            "text": invitations.share_text(meeting, links, strings),
        }

    found = await call.db(load)
    log_links(call.request, call.actor, call.params["meeting_id"], len(found["links"]), "api")
    return found
