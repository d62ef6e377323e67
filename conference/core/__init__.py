"""The lowest layer: what every other package may use, and which uses none of them.

It imports nothing of ``conference``; tests/test_import_graph.py checks it, with the
other rules of docs/ARCHITECTURE.md ("Dependency rules").
"""
