"""The HTML pages (each registers its routes from `setup_*`; `server.py` wires them)."""
