"""The recordings directory: safe paths, sealing, listing, verifying and pruning.

Meeting IDs and identities come from tokens and are never trusted on the
filesystem: :func:`safe_component` keeps ``[A-Za-z0-9._-]`` only (anything
else becomes ``_``, a leading dot too, and a short hash of the original is
appended when something was replaced, so that ``a/b`` and ``a_b`` stay
apart), and :func:`inside` checks every final path against the root.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .manifest import MANIFEST_SUFFIX, iso, read_manifest, sha256_file, write_manifest
from .signing import SignatureError, sign, verify

__all__ = [
    "PathError",
    "PruneAction",
    "inside",
    "list_recordings",
    "mark_interrupted",
    "meeting_directory",
    "prune",
    "safe_component",
    "seal",
    "verify_directory",
]

logger = logging.getLogger(__name__)

MAX_COMPONENT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class PathError(ValueError):
    """A path would leave the recordings directory."""


def safe_component(text: str, limit: int = MAX_COMPONENT) -> str:
    """``text`` as one safe file-name component (see the module documentation)."""
    cleaned = _UNSAFE.sub("_", text)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    cleaned = cleaned[:limit]
    if cleaned != text or not cleaned:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned[: limit - 9]}-{digest}" if cleaned else digest
    return cleaned


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved; :class:`PathError` unless it is inside ``root``."""
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved == resolved_root or not resolved.is_relative_to(resolved_root):
        raise PathError(f"{path} is outside the recordings directory")
    return resolved


def meeting_directory(root: Path, meeting_id: str, when: float) -> Path:
    """``<root>/<YYYY>/<MM>/<meeting>`` for a recording started at ``when`` (UTC)."""
    day = datetime.fromtimestamp(when, UTC)
    return inside(root, root / f"{day:%Y}" / f"{day:%m}" / safe_component(meeting_id))


def manifests(root: Path) -> list[Path]:
    """Every manifest under ``root`` (``YYYY/MM/<meeting>/*.manifest.json``)."""
    if not root.is_dir():
        return []
    return sorted(root.glob(f"[0-9][0-9][0-9][0-9]/[0-9][0-9]/*/*{MANIFEST_SUFFIX}"))


# -- sealing -------------------------------------------------------------------------
def seal(
    path: Path, manifest: dict[str, Any], key: Ed25519PrivateKey, state: str
) -> dict[str, Any]:
    """Hash every track file, set ``state``, sign and write the manifest; return it."""
    directory = path.parent
    for track in manifest.get("tracks", []):
        file = directory / str(track.get("file", ""))
        try:
            inside(directory, file)
            track["sha256"] = sha256_file(file)
            track["size"] = file.stat().st_size
        except (OSError, PathError):
            track["sha256"] = None  # nothing was written (no keyframe ever came)
            track["size"] = 0
    manifest["state"] = state
    manifest["sealed_at"] = iso(time.time())
    manifest.pop("signature", None)
    signed = sign(manifest, key)
    write_manifest(path, signed)
    return signed


def mark_interrupted(
    root: Path, key: Ed25519PrivateKey, refused: list[tuple[Path, dict[str, Any]]] | None = None
) -> list[Path]:
    """Seal as ``interrupted`` every manifest still ``recording`` (call at server start).

    A manifest the disk refuses to seal (full) is logged and appended to ``refused``
    with its content, never raised: a full recordings disk must not stop the server."""
    marked = []
    for path in manifests(root):
        manifest: dict[str, Any] | None = None
        try:
            manifest = read_manifest(path)
            if seal_interrupted(path, manifest, key):
                marked.append(path)
        except ValueError as exc:
            logger.warning("recordings: %s", exc)
        except OSError as exc:
            logger.error("recordings: cannot seal %s as interrupted: %s", path, exc)
            if refused is not None and manifest is not None:
                refused.append((path, manifest))
    return marked


def seal_interrupted(path: Path, manifest: dict[str, Any], key: Ed25519PrivateKey) -> bool:
    """Seal ``manifest`` (read from ``path``) as ``interrupted`` if it is still being
    recorded or finalized by a server that stopped without a clean stop; whether it was.
    OSError when the disk refuses."""
    if manifest.get("state") not in ("recording", "finalizing"):
        return False
    manifest["interrupted"] = {
        "detected_at": iso(time.time()),
        "last_update": manifest.get("updated_at"),
    }
    for track in manifest.get("tracks", []):
        if track.get("state") == "recording":
            track["state"] = "interrupted"
    seal(path, manifest, key, "interrupted")
    logger.warning("recordings: %s was interrupted (server stopped without a clean stop)", path)
    return True


# -- listing -------------------------------------------------------------------------
def list_recordings(root: Path) -> list[dict[str, Any]]:
    """One summary per manifest, oldest first."""
    found: list[dict[str, Any]] = []
    for path in manifests(root):
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            found.append({"manifest": str(path), "error": str(exc)})
            continue
        found.append(
            {
                "manifest": str(path.relative_to(root)),
                "meeting": manifest.get("meeting"),
                "state": manifest.get("state"),
                "started_at": manifest.get("started_at"),
                "stopped_at": manifest.get("stopped_at"),
                "tracks": len(manifest.get("tracks", [])),
                "minutes_final": bool(manifest.get("minutes_final")),
                "signed": "signature" in manifest,
            }
        )
    return found


# -- verifying -----------------------------------------------------------------------
def verify_directory(
    directory: Path, trusted: Ed25519PublicKey | None = None
) -> tuple[list[str], list[str]]:
    """Check every manifest of a meeting directory: (confirmations, problems)."""
    ok: list[str] = []
    problems: list[str] = []
    if not directory.is_dir():
        return ok, [f"{directory}: no such directory"]
    paths = sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))
    if not paths:
        return ok, [f"{directory}: no recording manifest here"]
    for path in paths:
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        try:
            which = verify(manifest, trusted)
        except SignatureError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        ok.append(f"{path.name}: signature valid ({which}), state {manifest.get('state')}")
        for track in manifest.get("tracks", []):
            name = str(track.get("file", ""))
            expected = track.get("sha256")
            file = directory / name
            try:
                inside(directory, file)
            except PathError:
                problems.append(f"{path.name}: track file {name!r} is outside the directory")
                continue
            if expected is None:
                if file.exists():
                    problems.append(f"{name}: present but not listed with a hash")
                continue
            if not file.is_file():
                problems.append(f"{name}: missing")
                continue
            actual = sha256_file(file)
            if actual != expected:
                problems.append(f"{name}: SHA-256 mismatch (file modified or damaged)")
            else:
                ok.append(f"{name}: SHA-256 ok")
    return ok, problems


# -- pruning -------------------------------------------------------------------------
@dataclass
class PruneAction:
    manifest: Path
    delete: bool
    reason: str
    files: list[Path]


def _stamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def prune(
    root: Path, older_than_days: int, dry_run: bool = True, now: float | None = None
) -> list[PruneAction]:
    """Delete recordings older than ``older_than_days`` whose minutes are final.

    A recording is deletable only when its manifest says ``"minutes_final": true``
    (set by the minutes feature once the secretary marks the minutes final) and
    it is not still recording.  Age is counted from its stop (else its start).
    """
    now = time.time() if now is None else now
    limit = now - older_than_days * 86400
    actions = []
    for path in manifests(root):
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            actions.append(PruneAction(path, False, f"unreadable: {exc}", []))
            continue
        when = _stamp(manifest.get("stopped_at")) or _stamp(manifest.get("started_at"))
        files = [path]
        for track in manifest.get("tracks", []):
            file = path.parent / str(track.get("file", ""))
            try:
                files.append(inside(path.parent, file))
            except PathError:
                pass
        if when is None or when > limit:
            continue  # young enough: nothing to say
        if manifest.get("state") == "recording":
            actions.append(PruneAction(path, False, "still recording", files))
        elif manifest.get("minutes_final") is not True:
            actions.append(PruneAction(path, False, "kept: minutes not final", files))
        else:
            actions.append(PruneAction(path, True, "older than retention", files))
    if not dry_run:
        for action in actions:
            if not action.delete:
                continue
            for file in action.files:
                file.unlink(missing_ok=True)
            _remove_empty(action.manifest.parent, root)
    return actions


def _remove_empty(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents up to ``root`` while they are empty."""
    root = root.resolve()
    current = directory.resolve()
    while current != root and current.is_relative_to(root):
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def recording_id(relative: str) -> str:
    """The opaque id of the manifest at ``relative`` (its path under the recordings
    root): what the library's URLs and the minutes name a recording by, never the path."""
    return hashlib.sha256(relative.encode()).hexdigest()[:16]
