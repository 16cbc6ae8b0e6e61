"""The shell scripts of scripts/ and deploy/: shellcheck must pass on every one of them."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHELLS = ("#!/usr/bin/env bash", "#!/bin/bash", "#!/bin/sh", "#!/usr/bin/env sh")


def shell_scripts() -> list[Path]:
    found = []
    for folder in ("scripts", "deploy", ".ci"):
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file():
                continue
            with path.open("rb") as file:
                first = file.readline().decode(errors="replace").strip()
            if path.suffix == ".sh" or first in SHELLS:
                found.append(path)
    return found


def test_the_scripts_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in shell_scripts()}
    wanted = {"scripts/setup", "scripts/test", "scripts/lock", "deploy/host/rln-hostctl"}
    assert wanted <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_passes(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("no shellcheck here: ./scripts/setup installs it (as root)")
    done = subprocess.run(
        ["shellcheck", "--external-sources", str(script)],
        cwd=script.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
