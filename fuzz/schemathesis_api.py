"""Schemathesis against the JSON API of a real server (``/api/v1/openapi.json``).

Starts ``python -m conference serve`` on 127.0.0.1 (an empty data directory: SQLite, the
first-run administrator), signs in as that administrator (``POST /api/v1/tokens``),
creates a district and its secretary, then runs ``schemathesis run`` on the server's
OpenAPI document, with the secretary's token (the meeting operations are the
secretaries'), then with the administrator's (the administrator's sign-out of an account
last: it may end the administrator's own token), with the checks
``not_a_server_error`` (no 5xx) and ``response_schema_conformance`` (every answer
matches the document), and finally checks that the server logged no traceback and
exits cleanly.  Exit status 0 when all of that holds.

    python fuzz/schemathesis_api.py                          # the short run (CI)
    python fuzz/schemathesis_api.py --max-examples 500 --phases examples,coverage,fuzzing,stateful

Other arguments are passed to ``schemathesis run`` as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = "not_a_server_error,response_schema_conformance"
SIGNOUT = "/signout$"


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    """(process, base URL, administrator password, log file) of a fresh server."""
    log_file = tmp / "server.log"
    env = dict(os.environ)
    env.update(
        {
            "CONFERENCE_RECORDINGS_DIR": str(tmp / "recordings"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    command = [
        sys.executable,
        "-m",
        "conference",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(tmp / "data"),
        "--tls",
        "off",
        "--ice-host",
        "127.0.0.1",
    ]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace")
        ports = [json.loads(line)["port"] for line in text.splitlines() if '"listening"' in line]
        password = re.search(r"with the password (\S+)", text)
        if ports and password:
            return process, f"http://127.0.0.1:{ports[0]}", password.group(1), log_file
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start:\n" + log_file.read_text(errors="replace"))


def call(url: str, body: dict[str, object], token: str | None = None) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def tracebacks(log: str) -> list[str]:
    """The log records with a traceback, but aiohttp's own report of a request it could
    not parse (a header with a NUL byte, as schemathesis probes send): it answers 400."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ |conference: )", log)
    return [
        record
        for record in records
        if "Traceback" in record
        and not ("aiohttp.server: Error handling request" in record and "BadHttpMessage" in record)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=5, help="per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--users", choices=("admin", "both"), default="both")
    args, rest = parser.parse_known_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    began = time.monotonic()
    process, base, password, log_file = start_server(tmp)
    print(f"--- server ready in {time.monotonic() - began:.1f} s", flush=True)
    try:
        admin = str(
            call(base + "/api/v1/tokens", {"username": "admin", "password": password})["token"]
        )
        call(
            base + "/api/v1/units",
            {"code": "huyen-a", "name": "Huyện A", "kind": "district"},
            admin,
        )
        secretary = {"username": "thuky-a", "role": "secretary", "unit": "huyen-a"}
        call(base + "/api/v1/users", secretary | {"password": "mat-khau-1"}, admin)
        # the secretary first (the administrator may disable the account), the
        # administrator's "sign out everywhere" last (it ends the administrator's token)
        runs: list[tuple[str, str, list[str]]] = []
        if args.users == "both":  # the meeting operations are a secretary's
            login = {"username": "thuky-a", "password": "mat-khau-1"}
            secretary_token = str(call(base + "/api/v1/tokens", login)["token"])
            runs.append(("secretary", secretary_token, []))
        runs.append(("admin", admin, ["--exclude-path-regex", SIGNOUT]))
        runs.append(("admin (sign-out)", admin, ["--include-path-regex", SIGNOUT]))
        returncode = 0
        for user, token, selection in runs:
            print(f"--- schemathesis as {user}", flush=True)
            command = [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                base + "/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--phases",
                args.phases,
                "--workers",
                str(args.workers),
                "--no-color",
                *selection,
                *rest,
            ]
            returncode |= subprocess.run(command, cwd=tmp, check=False).returncode
    finally:
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        print(f"--- server stopped in {time.monotonic() - stopping:.1f} s", flush=True)
    log = log_file.read_text(errors="replace")
    failed = returncode != 0
    if tracebacks(log) or code != 0:
        print(f"the server logged a traceback or exited with {code}:\n{log[-6000:]}")
        failed = True
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"server log and schemathesis files kept in {tmp}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
