"""conference: online briefings between a district and its communes."""

__version__ = "0.1.0"
