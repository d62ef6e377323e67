"""Security headers on every response (conference/web/headers.py; issue 14 item 14)."""

from __future__ import annotations

import aiohttp

from conference.web.headers import _plain_host, content_security_policy

from .conftest import ServerProcess


async def test_every_response_carries_the_security_headers(server: ServerProcess) -> None:
    paths = {
        "/": 200,  # the landing page
        "/login": 200,
        "/static/room.js": 200,
        "/api/v1/openapi.json": 200,
        "/healthz": 200,
        "/api/v1/units": 401,  # an error answer too
        "/no-such-page": 404,
    }
    host = server.url.split("//", 1)[1]
    async with aiohttp.ClientSession() as http:
        for path, status in paths.items():
            async with http.get(server.url + path, allow_redirects=False) as response:
                assert response.status == status, path
                headers = response.headers
                policy = headers["Content-Security-Policy"]
                assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
                assert f"connect-src 'self' ws://{host}" in policy, policy
                assert "'unsafe-eval'" not in policy and "script-src 'self' 'unsafe" not in policy
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["Referrer-Policy"] == "no-referrer"
                assert headers["X-Content-Type-Options"] == "nosniff"
                # plain HTTP here (tls = "off"): no HSTS, and never with the self-signed default
                assert "Strict-Transport-Security" not in headers
        # a forged Host header is not echoed into the policy
        headers = {"Host": "evil.example; script-src *"}
        async with http.get(server.url + "/login", headers=headers) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "evil" not in policy and "script-src *" not in policy


def test_no_page_template_carries_inline_script() -> None:
    """What the policy forbids is absent from the pages: inline handlers and scripts
    (a JSON data block is not a script)."""
    import re
    from pathlib import Path

    templates = Path(__file__).resolve().parent.parent / "web" / "templates"
    for template in templates.glob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        for tag in re.findall(r"<script[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (template.name, tag)
        assert "javascript:" not in text, template.name


def test_the_policy_and_the_host_check() -> None:
    policy = content_security_policy("hop.example.vn:8443", secure=True)
    assert "connect-src 'self' wss://hop.example.vn:8443" in policy
    assert "connect-src 'self';" in content_security_policy("", secure=False)
    assert _plain_host("127.0.0.1:8443") and _plain_host("[::1]:8443")
    assert not _plain_host("a b") and not _plain_host("x;y") and not _plain_host("")
