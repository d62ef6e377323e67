"""The shared runner of the atheris fuzz targets (see fuzz/README.md).

Every target is a script: ``python fuzz/fuzz_x.py [libFuzzer flags] [corpus dirs | crash file]``.
It imports the project's modules inside :func:`instrumented` (so that libFuzzer's coverage
counts their branches), defines ``test_one_input(data: bytes)`` and hands it to :func:`run`
with a few hand-written seed inputs.  A crash is any exception that escapes
``test_one_input``: each target catches only the error types its code documents.

Without a positional argument the corpus is ``fuzz/corpus/<name>/`` (git-ignored); corpus
directories are created if need be, and an empty one is first filled with the target's
seeds.  A file argument runs that one
input (libFuzzer's reproduction mode): ``python fuzz/fuzz_x.py crash-1234abcd``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import atheris

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
CORPUS_ROOT = FUZZ_DIR / "corpus"
#: names libFuzzer gives the inputs it writes
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")

if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


def instrumented(*others: str) -> Any:
    """A context manager: modules of ``conference`` (and of the packages ``others``)
    first imported inside it are instrumented."""
    return atheris.instrument_imports(include=["conference", *others])


def _seed(directory: Path, seeds: Iterable[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for seed in seeds:
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        (directory / name).write_bytes(seed)


def run(name: str, test_one_input: Callable[[bytes], None], seeds: Iterable[bytes] = ()) -> None:
    """Seed the corpus, then hand ``sys.argv`` (libFuzzer's flags) to atheris and fuzz."""
    seeds = list(seeds)
    argv = list(sys.argv)
    positional = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not positional:
        corpus = CORPUS_ROOT / name
        argv.append(str(corpus))
        positional = [str(corpus)]
    for arg in positional:
        path = Path(arg)
        if path.is_file():
            continue
        if not path.exists() and path.name.startswith(ARTIFACTS):
            sys.exit(f"{arg}: no such input file")  # a mistyped crash file: do not fuzz
        _seed(path, seeds)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
