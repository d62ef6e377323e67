"""Recording: forwarded RTP muxed into one WebM/Matroska file per track, no decoding.

``recorder`` is the in-server participant (``start(room)``/``stop(room)``),
``depacketize`` turns RTP packets into whole frames, ``writer`` muxes them with
PyAV, ``manifest`` and ``signing`` describe and seal a meeting's recording,
``store`` lists, verifies and prunes the recordings directory.  The on-disk
layout is documented in docs/OPERATIONS.md ("Recordings").
"""
