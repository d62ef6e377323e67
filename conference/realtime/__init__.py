"""The real-time layer: WebSocket signaling and its message handlers, the chair's briefing
rules, the lobby of scheduled meetings, WHIP/WHEP, and access (a token to an identity).

Between the media plane (`sfu/`, which it drives) and the domain (the lifecycle of
scheduled meetings); the web layer uses its access check, never the reverse.
"""
