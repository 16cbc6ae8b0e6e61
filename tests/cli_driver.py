"""Runs `fleet` commands one after another in one process, for the property test in
tests/test_cli_fuzz.py: exactly what `python -m worker ARGS...` runs (worker.cli.main),
without paying a process start per example.

Each line on stdin is a JSON list of arguments, hex-encoded bytes as an OS passes them;
each answer on stdout is one JSON line: the exit code, what the command wrote to stderr,
and the traceback if an exception got out of main() (what Python would have printed)."""

import io
import json
import os
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout

from worker.cli import main


def run_once(argv: list[str]) -> dict[str, object]:
    sys.argv = ["fleet", *argv]
    stdout, stderr = io.StringIO(), io.StringIO()
    escaped: str | None = None
    code: object = 0
    sys.stdin = io.StringIO()  # a prompt reads end-of-file, never the requests
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        except BaseException:  # noqa: BLE001  # what would have escaped to the interpreter
            escaped = traceback.format_exc()
            code = 1
    return {"code": code or 0, "stderr": stderr.getvalue(), "traceback": escaped}


def serve() -> None:
    requests = sys.__stdin__
    answers = sys.__stdout__
    assert requests is not None and answers is not None
    for line in requests:
        argv = [os.fsdecode(bytes.fromhex(arg)) for arg in json.loads(line)]
        answers.write(json.dumps(run_once(argv)) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
