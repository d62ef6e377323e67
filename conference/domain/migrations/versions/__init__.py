"""Migration revisions, oldest first (v0001_initial.py, v0002_..., ...)."""
