"""One lock file: requirements.lock pins every dependency of pyproject.toml (with the sim
and dev extras), with hashes; scripts/setup and the Dockerfile install exactly it."""

import re
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
SETUP = REPO / "scripts" / "setup"


@cache
def pins() -> dict[str, tuple[str, str | None, list[str]]]:
    """name -> (version, marker, hashes) for every entry of the lock."""
    found: dict[str, tuple[str, str | None, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)\s*(?:;\s*([^-]+?))?\s*(--hash.*)?$", line)
        assert match, f"requirements.lock: not a pin with hashes: {line[:80]}"
        name, version, marker, hashes = match.groups()
        key = canonicalize_name(name.split("[")[0])
        if marker is None or Marker(marker).evaluate():
            found[key] = (version, marker, re.findall(r"--hash=sha256:(\w+)", hashes or ""))
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    own = canonicalize_name(project["name"])
    return [r for r in map(Requirement, listed) if canonicalize_name(r.name) != own]


def test_the_lock_pins_every_declared_dependency_within_its_bounds() -> None:
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins(), f"{name} is in pyproject.toml, not in the lock: run ./scripts/lock"
        version = pins()[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {requirement.specifier}: run ./scripts/lock"
        )


def test_every_pin_has_a_hash() -> None:
    assert len(pins()) > 50
    for name, (_, _, hashes) in pins().items():
        assert hashes, f"{name} has no hash"


def test_the_environment_is_the_lock() -> None:
    """What scripts/setup installed is exactly what the lock says."""
    for name, (version, _, _) in pins().items():
        assert metadata.version(name) == version, name


def test_setup_installs_the_lock_then_the_project_alone() -> None:
    script = SETUP.read_text()
    assert re.search(r"pip install --require-hashes -r requirements\.lock", script)
    assert re.search(r"pip install --no-deps -e \.", script)
    assert "requirements.lock" in script.split("wanted=", 1)[1].splitlines()[0], (
        "a changed lock must reinstall"
    )


def test_the_lock_says_how_to_make_it_again() -> None:
    assert "#    ./scripts/lock" in LOCK.read_text().splitlines()[1]
    assert (REPO / "scripts" / "lock").stat().st_mode & 0o111
