"""A full recordings disk: how it is recognised, and the manifests it would not let be sealed.

The recorder (``recorder``) stops a recording when a write fails with ENOSPC or EDQUOT
(:func:`disk_full`) or when :func:`free_bytes` falls below its floor.  Sealing writes the
manifest, which a full disk may refuse too: :class:`SealQueue` keeps such a manifest (its
content is in memory) and seals it again every ``interval`` seconds until the disk takes
it; what waits is reported by ``/healthz``.  Nothing here raises on a full disk: a full
recordings disk must never stop a meeting or the server's start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .store import seal

__all__ = ["DISK_FULL", "MB", "SealQueue", "disk_full", "free_bytes", "reason"]

logger = logging.getLogger(__name__)

MB = 1024 * 1024
#: what a full disk or quota raises (a file system of its own for recordings, a tmpfs)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def reason(exc: BaseException) -> str:
    """``No space left on device``: an error's own words, without its class."""
    strerror = exc.strerror if isinstance(exc, OSError) else None
    return strerror or str(exc)


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer where ``path`` is (None if unknown)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class SealQueue:
    """Manifests the disk refused to seal, sealed again every ``interval`` seconds.

    ``on_sealed(path, manifest)`` is called with each once it is sealed (the recorder
    queues its composition).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.waiting: dict[Path, tuple[dict[str, Any], str]] = {}  # path -> (manifest, state)
        self.key: Ed25519PrivateKey | None = None
        self.on_sealed: Callable[[Path, dict[str, Any], str], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def keep(self, path: Path, manifest: dict[str, Any], state: str, why: str) -> None:
        """Seal ``manifest`` (as ``state``) at ``path`` later; starts the loop if there is
        an event loop (not in the supervisor of several workers: the next start seals)."""
        self.waiting[path] = (manifest, state)
        logger.error(
            "recordings: cannot seal %s (%s): kept to seal again every %d s",
            path.name,
            why,
            self.interval,
        )
        if self._task is not None and not self._task.done():
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._run())
        except RuntimeError:
            self._task = None

    async def _run(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.interval)
            if self.key is None:
                continue
            for path, (manifest, state) in list(self.waiting.items()):
                try:
                    sealed = await asyncio.to_thread(seal, path, manifest, self.key, state)
                except OSError as exc:
                    logger.warning("recordings: %s still cannot be sealed: %s", path.name, exc)
                    continue
                self.waiting.pop(path, None)
                logger.info("recordings: %s sealed (%s)", path.name, state)
                if self.on_sealed is not None:
                    self.on_sealed(path, sealed, state)

    def stop(self) -> None:
        """At shutdown: the next start seals what is left (still unsealed on disk)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for path in self.waiting:
            logger.error("recordings: %s left unsealed (the recordings disk is full)", path.name)

    def clear(self) -> None:
        self.stop()
        self.waiting.clear()
