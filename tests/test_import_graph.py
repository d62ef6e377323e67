"""The dependency rules of docs/ARCHITECTURE.md, checked on the code's imports.

The graph is read from the source (``ast``), every ``import`` and ``from ... import``
of a ``conference`` module, at module level or inside a function (a function-local
import is still a dependency).  Imports under ``if TYPE_CHECKING:`` are type-only:
they load nothing at run time.

1. No circle of run-time imports.
2. A circle that needs type-only imports stays inside one package (a parent and its
   children referring to each other's types, e.g. ``Room`` and ``Participant``).
3. Directions, for every import, type-only ones too:
   ``core`` imports nothing else of conference; ``sfu`` imports only ``sfu`` and
   ``core``; ``notify`` only ``notify``, ``core`` and the settings; nothing but
   ``tools`` and the command line imports ``tools``; the domain
   (``domain``) imports neither the web layer, nor the media
   plane, nor the real-time glue; the real-time layer never imports the web layer;
   the web layer never imports ``sfu``; the JSON API
   imports no page module (both use the services of the domain).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .conftest import parse_python

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "conference"

#: the web layer: HTTP pages, the page framework and the JSON API
WEB = "conference.web"
#: the real-time layer: signaling, the briefing rules, the lobby, WHIP/WHEP, access
REALTIME = "conference.realtime"


def is_web(module: str) -> bool:
    return module == WEB or module.startswith(WEB + ".")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def type_only_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(n.lineno for n in ast.walk(child) if hasattr(n, "lineno"))
    return lines


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """(imported conference module, type-only) for each import of module ``name``."""
    tree = parse_python(path.read_text(encoding="utf-8"))
    typed = type_only_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in known and candidate != name:
                yield candidate, node.lineno in typed
                break


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(run-time edges, type-only edges) between conference modules."""
    known = modules()
    runtime: dict[str, set[str]] = {name: set() for name in known}
    typed: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, type_only in imports(name, path, known):
            (typed if type_only else runtime)[name].add(target)
    return runtime, typed


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def forbidden(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target`` (None: it may)."""
    if source.startswith("conference.core") and not target.startswith("conference.core"):
        return "core imports nothing else of conference"
    if source.startswith("conference.sfu") and not target.startswith(
        ("conference.sfu", "conference.core")
    ):
        return "the media plane imports only sfu and core"
    if target.startswith("conference.tools") and not source.startswith(
        ("conference.tools", "conference.cli")
    ):
        return "tools drive the server from outside: only the command line imports them"
    if source.startswith("conference.notify") and not target.startswith(
        ("conference.notify", "conference.core", "conference.settings")
    ):
        return "notices take plain values: notify imports only core and the settings"
    if source.startswith("conference.domain") and (
        is_web(target) or target.startswith(("conference.sfu", REALTIME))
    ):
        return "the domain imports neither the web layer, the media plane nor the real-time glue"
    if source.startswith("conference.cluster") and not target.startswith(
        ("conference.cluster", "conference.sfu", "conference.core")
    ):
        return "the cluster relays media and shares a directory: it imports only sfu and core"
    if source.startswith(REALTIME) and is_web(target):
        return "the real-time layer never imports the web layer"
    if is_web(source) and target.startswith("conference.sfu"):
        return "the web layer never imports the media plane"
    if source.startswith("conference.web.api") and target.startswith("conference.web.pages"):
        return "the API shares services with the pages, it does not import them"
    return None


def test_the_graph_is_read() -> None:
    runtime, typed = graph()
    assert len(runtime) > 90
    assert "conference.sfu.bridge" in runtime["conference.sfu.subscription"]
    assert "conference.sfu.subscription" in typed["conference.sfu.publication"]
    # the checks below can fail: a circle and a wrong direction are found
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert forbidden("conference.sfu.room", "conference.domain.db") is not None
    assert forbidden("conference.notify.mail", "conference.domain.models") is not None
    assert forbidden("conference.recording.cli", "conference.tools.synthetic") is not None
    assert forbidden("conference.realtime.lobby", "conference.web.site") is not None
    assert forbidden("conference.web.pages.meetings", "conference.sfu.room") is not None
    assert forbidden("conference.web.api.meetings", "conference.web.pages.meetings") is not None


def test_no_circle_of_run_time_imports() -> None:
    runtime, _ = graph()
    assert circles(runtime) == []


def test_type_only_circles_stay_inside_one_package() -> None:
    runtime, typed = graph()
    both = {name: runtime[name] | typed[name] for name in runtime}
    across = [c for c in circles(both) if len({m.rpartition(".")[0] for m in c}) > 1]
    assert across == []


def test_dependency_directions() -> None:
    runtime, typed = graph()
    wrong = sorted(
        f"{source} -> {target}: {why}"
        for edges in (runtime, typed)
        for source, targets in edges.items()
        for target in targets
        if (why := forbidden(source, target))
    )
    assert wrong == []


def test_the_server_process_loads_no_tool_and_no_numpy() -> None:
    """What `conference serve` imports: no test or load-test tool, no composer, no numpy.

    The composer (recording/compose.py, numpy and PyAV codecs) runs in its own process.
    """
    probe = (
        "import json, sys, conference.server;"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'numpy'"
        " or m.startswith(('conference.tools', 'conference.recording.compose')))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
