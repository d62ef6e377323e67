"""The web layer: HTTP only.

The page framework (`auth.py`: sessions, CSRF, throttling, the `@page` check; `site.py`:
static files, language, rendering, the landing and room pages), the pages (`pages/`),
the JSON API (`api/`: the framework in `api/__init__.py`, one module per resource) and
the minutes' Word export that both use. It imports the domain, recording and core; never sfu.
"""
