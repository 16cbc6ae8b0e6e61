"""The shell scripts of scripts/ and deploy/: shellcheck must pass on every one of them."""

import os
import shutil
import subprocess
import sys
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


# --- scripts/setup installs what is missing, after apt-get update, and nothing else -----

SYSTEM_TOOLS = ("bash", "cat", "cut", "sha256sum", "ls", "dirname")


def setup_copy(tmp_path: Path, present: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """scripts/setup in a copy of the project whose .venv is already installed, run as
    "root" (a stub `id`) on a PATH that holds only `present` of the tools it looks for and
    an apt-get that records its calls."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("requirements.lock", "pyproject.toml", "scripts/setup"):
        shutil.copy2(REPO / name, project / name)
    venv = project / ".venv"
    (venv / "bin").mkdir(parents=True)
    python = os.path.realpath(sys.executable)  # the interpreter itself, not a shim
    (venv / "bin" / "python").symlink_to(python)
    installed = subprocess.run(
        "cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1",
        shell=True, cwd=project, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (venv / ".fleet-installed").write_text(installed)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SYSTEM_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(python)
    calls = tmp_path / "apt-calls"
    scripts = {"id": "echo 0\n", "apt-get": f'echo "$*" >> {calls}\n'}
    scripts |= {tool: "exit 0\n" for tool in present}
    for tool, body in scripts.items():
        (bin_dir / tool).write_text("#!/bin/sh\n" + body)
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": str(bin_dir), "FLEET_TEST_DATABASE_URL": "postgresql://given"}
    return project, env


def apt_calls(tmp_path: Path, present: tuple[str, ...]) -> list[str]:
    project, env = setup_copy(tmp_path, present)
    done = subprocess.run(
        [str(project / "scripts" / "setup")], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = tmp_path / "apt-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_setup_updates_the_package_lists_before_installing(tmp_path: Path) -> None:
    calls = apt_calls(tmp_path, present=("redis-server",))
    assert len(calls) == 2, calls
    assert calls[0].startswith("update")
    assert calls[1].startswith("install")
    assert set(calls[1].split()) >= {"shellcheck", "docker-compose", "cloud-init", "prometheus"}
    assert "redis-server" not in calls[1].split(), "only what is missing"


def test_setup_on_a_machine_that_has_everything_runs_no_apt_get(tmp_path: Path) -> None:
    present = ("redis-server", "shellcheck", "docker-compose", "cloud-init", "promtool")
    assert apt_calls(tmp_path, present=present) == []
