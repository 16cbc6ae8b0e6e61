"""Property: whatever arguments an operator types, `fleet` answers with an exit code of
0, 1 or 2 and never a traceback. The argument lists come from the command line's own tree
(typer's click commands, their arguments and options), filled with plausible and garbage
values, including bytes that are not UTF-8; they run in one real `fleet` process
(tests/cli_driver.py) against the test's Postgres."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.secrets import new_key
from models.states import ALL_STATES
from tests.conftest import REPO, add_nodes
from worker.cli import app

# Not fuzzed: `db` changes logins cluster-wide (shared by every test), and the services
# (worker, dispatcher, api) run until stopped.
LEFT_OUT = {("db",), ("worker",), ("dispatcher",), ("api",)}


# Typer's commands are click's (vendored in newer typer, so looked at, not isinstance'd).
Command = Any


def leaf_commands(
    command: Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Command]]:
    if path in LEFT_OUT:
        return
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            yield from leaf_commands(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(leaf_commands(typer.main.get_command(app)))

# Real argv never holds NUL: the OS passes C strings.
garbage_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
not_utf8 = st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b).map(os.fsdecode)
names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True) | st.sampled_from(["keeper"])
values = st.one_of(
    names,
    st.sampled_from([*ALL_STATES, "0.9.1", "s3://r/x.tar.gz", "ab" * 32, "-1", "0", "--json"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    garbage_text,
    not_utf8,
)


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    path, command = draw(st.sampled_from(COMMANDS))
    args: list[str] = list(path)
    for param in command.params:
        if param.param_type_name == "argument":
            if draw(st.integers(0, 9)) > 0:  # now and then one is missing
                args.append(draw(values))
        elif draw(st.booleans()):
            flag = param.opts[0]
            args.extend([flag] if getattr(param, "is_flag", False) else [flag, draw(values)])
    if draw(st.integers(0, 9)) == 0:  # a stray word or option
        args.insert(draw(st.integers(0, len(args))), draw(values | st.just("--bogus")))
    return args


class Driver:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_driver"],
            env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, args: list[str]) -> dict[str, object]:
        assert self.process.stdin is not None and self.process.stdout is not None
        encoded = [os.fsencode(arg).hex() for arg in args]
        self.process.stdin.write(json.dumps(encoded) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the fleet process died on {args!r}"
        answer: dict[str, object] = json.loads(line)
        return answer

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def driver(operator_env: dict[str, str], db_url: str) -> Iterator[Driver]:
    add_nodes(db_url, ["keeper"])
    key = f"k1:{new_key()}"
    running = Driver({**operator_env, "FLEET_SECRET_KEYS": key, "FLEET_SECRET_KEY_ID": "k1"})
    yield running
    running.stop()


def test_the_command_tree_is_covered() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {("node", "create"), ("node", "secrets"), ("secrets", "reseal"), ("status",)} <= paths


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=argv())
def test_no_arguments_make_a_traceback(driver: Driver, args: list[str]) -> None:
    answer = driver.run(args)
    assert answer["traceback"] is None, f"{args!r}:\n{answer['traceback']}"
    assert "Traceback" not in str(answer["stderr"]), args
    assert answer["code"] in (0, 1, 2), (args, answer)
