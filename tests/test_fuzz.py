"""The short run of the fuzzers (fuzz/README.md): every atheris target for a few thousand
inputs from its seeds, and schemathesis against a real server for a few examples per
operation.  A crash fails the test with the input that caused it.

atheris and schemathesis are in the ``test`` extras: without them these tests fail (an
ImportError in the subprocess), they are never skipped.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"

#: target -> inputs in the short run (a couple of seconds each on a loaded 2-core machine)
RUNS = {
    "signaling": 100,
    "depacketize": 3000,
    "packetmap": 1500,
    "rtp": 5000,
    "simulcast": 3000,
    "csv": 2000,
    "rrule": 3000,
}


def test_every_target_is_run() -> None:
    targets = {path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py")}
    assert targets == set(RUNS)


@pytest.mark.parametrize("target", sorted(RUNS))
def test_atheris_target(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{target}.py"),
        f"-runs={RUNS[target]}",
        "-seed=1",
        "-max_total_time=40",
        "-timeout=20",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = result.stdout + result.stderr
    found = sorted(artifacts.iterdir())
    if result.returncode != 0 or found:
        inputs = "\n".join(
            f"{path.name}: {base64.b64encode(path.read_bytes()).decode()} (base64)"
            for path in found
        )
        pytest.fail(
            f"fuzz_{target} failed (exit {result.returncode}); reproduce with "
            f"`python fuzz/fuzz_{target}.py <file>`\n{inputs}\n{output[-4000:]}"
        )
    assert "Done " in output and any(corpus.iterdir()), output[-2000:]


def test_schemathesis_against_a_real_server(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(FUZZ / "schemathesis_api.py"),
        "--max-examples",
        "1",
        "--phases",
        "fuzzing",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert output.count("passed") >= 3 and "--- server stopped" in output, output[-3000:]
