"""The container setup: docker-compose.yml and the Dockerfile, checked without Docker."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

SERVICES = {"postgres", "redis", "migrate", "dispatcher", "worker"}
APP_SERVICES = {"migrate", "dispatcher", "worker"}
LONG_RUNNING = {"dispatcher", "worker"}
SHARED_ENV = "x-fleet-env"


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict), f"service {name} is not a mapping"
    return found


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either Compose form (mapping or list of KEY=VALUE)."""
    env = spec.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    assert isinstance(env, dict)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(spec: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means service_started)."""
    deps = spec.get("depends_on", {})
    if isinstance(deps, list):
        return {str(name): "service_started" for name in deps}
    return {str(name): str(dep.get("condition", "service_started")) for name, dep in deps.items()}


def as_argv(command: object) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), f"command {command!r} is neither a string nor a list"
    return [str(part) for part in command]


def seconds(duration: str) -> float:
    """A Compose duration such as 60s, 1m30s or 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


# --- docker compose itself --------------------------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    if not docker_compose_available():
        pytest.skip("`docker compose version` fails here: no Docker Compose to validate with")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- docker-compose.yml -----------------------------------------------------------------


def test_compose_parses_without_a_version_key() -> None:
    assert "version" not in compose(), "the Compose spec has no top-level version"
    assert isinstance(compose().get("services"), dict)


def test_the_five_services_exist() -> None:
    services = compose()["services"]
    assert {name for name, s in services.items() if "profiles" not in s} == SERVICES


def test_the_sim_demo_is_only_in_the_sim_profile() -> None:
    demo = service("demo")
    assert demo["profiles"] == ["sim"]
    assert demo["build"]["args"]["EXTRAS"] == "sim"
    assert demo["entrypoint"] == ["python", "-m", "sim.demo"]
    assert "postgres:5432" in demo["environment"]["FLEET_DATABASE_URL"]


def test_the_worker_scales() -> None:
    worker = service("worker")
    assert "container_name" not in worker, "a fixed container name stops --scale worker=N"
    assert "ports" not in worker, "host ports clash once there is more than one worker"


def test_no_app_service_has_a_fixed_name_or_host_port() -> None:
    for name in LONG_RUNNING:
        assert "container_name" not in service(name), name
        assert "ports" not in service(name), name


def test_migrate_runs_once() -> None:
    migrate = service("migrate")
    assert migrate.get("restart") == "no", "restart must be the string 'no' (quoted in YAML)"
    assert as_argv(migrate["command"]) == ["db", "upgrade"]
    assert depends_on(migrate).get("postgres") == "service_healthy"


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_wait_for_migrations_and_services(name: str) -> None:
    deps = depends_on(service(name))
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("redis") == "service_healthy"
    assert deps.get("postgres") == "service_healthy"
    assert service(name).get("restart") in {"unless-stopped", "always"}


def test_every_dependency_condition_can_be_met() -> None:
    for name, spec in compose()["services"].items():
        for dep, condition in depends_on(spec).items():
            assert dep in compose()["services"], f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in service(dep), f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert service(dep).get("restart") == "no", f"{dep} must exit for {name}"


def test_postgres_and_redis_have_their_healthchecks() -> None:
    assert "pg_isready" in " ".join(as_argv(service("postgres")["healthcheck"]["test"]))
    redis_check = as_argv(service("redis")["healthcheck"]["test"])
    assert "redis-cli" in redis_check
    assert "ping" in redis_check
    assert str(service("postgres")["image"]).startswith("postgres:16")
    assert str(service("redis")["image"]).startswith("redis:7")


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    volumes = compose().get("volumes") or {}
    mounts = [str(v).split(":")[0] for v in service("postgres").get("volumes", [])]
    assert any(m in volumes for m in mounts), f"no named volume among {mounts}"


def test_the_worker_has_time_to_finish_a_step() -> None:
    worker = service("worker")
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(str(worker.get("stop_grace_period", "10s"))) >= 60
    assert service("dispatcher").get("stop_signal", "SIGTERM") == "SIGTERM"


def test_app_services_build_the_same_image() -> None:
    for name, spec in compose()["services"].items():
        if "build" not in spec:
            assert name not in APP_SERVICES, f"{name} must build the fleet image"
            continue
        build = spec["build"]
        context = build if isinstance(build, str) else build.get("context")
        assert context == ".", f"{name} builds from {context!r}"
        if isinstance(build, dict):
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name


def test_the_shared_environment() -> None:
    shared = compose().get(SHARED_ENV)
    assert isinstance(shared, dict), f"{SHARED_ENV} holds the app services' environment"
    for key in shared:
        assert str(key).startswith("FLEET_"), key
    assert urlsplit(str(shared["FLEET_DATABASE_URL"])).hostname == "postgres"
    assert urlsplit(str(shared["FLEET_REDIS_URL"])).hostname == "redis"
    assert shared["FLEET_LOG_FORMAT"] == "json"
    for name in APP_SERVICES:
        assert environment(service(name)) == environment({"environment": shared}), name


def test_the_database_url_matches_the_postgres_service() -> None:
    url = urlsplit(str(compose()[SHARED_ENV]["FLEET_DATABASE_URL"]))
    pg = environment(service("postgres"))
    assert url.username == pg.get("POSTGRES_USER", "postgres")
    assert url.password == pg["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg.get("POSTGRES_DB", url.username)
    assert url.port in {None, 5432}


def fleet_help(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *argv, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_app_commands_are_real_fleet_subcommands() -> None:
    commands = [as_argv(service(name)["command"]) for name in sorted(APP_SERVICES)]
    commands.append(dockerfile_instruction_args("CMD"))
    for argv in commands:
        result = fleet_help(argv)
        assert result.returncode == 0, f"fleet {' '.join(argv)}: {result.stderr}"


def test_an_unknown_subcommand_is_caught() -> None:
    """The check above would pass for anything if --help always succeeded."""
    assert fleet_help(["no-such-command"]).returncode != 0


# --- Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    found = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        found.append((keyword.upper(), args.strip()))
    return found


def dockerfile_args(args: str) -> list[str]:
    """Exec form (JSON array) or shell form."""
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list)
        return [str(part) for part in parsed]
    return shlex.split(args)


def dockerfile_instruction_args(keyword: str) -> list[str]:
    matching = [args for kw, args in dockerfile_instructions() if kw == keyword]
    assert matching, f"the Dockerfile has no {keyword}"
    return dockerfile_args(matching[-1])


def test_dockerfile_base_image() -> None:
    froms = [args for kw, args in dockerfile_instructions() if kw == "FROM"]
    assert froms, "no FROM"
    assert froms[-1].split()[0].startswith("python:3.11"), froms[-1]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for kw, args in dockerfile_instructions() if kw == "USER"]
    assert users, "the image runs as root: add a USER line"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, user


def test_dockerfile_entrypoint_is_fleet() -> None:
    assert dockerfile_instruction_args("ENTRYPOINT")[0] == "fleet"


def copied_sources() -> list[str]:
    sources: list[str] = []
    for keyword, args in dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        parts = [p for p in dockerfile_args(args) if not p.startswith("--")]
        assert len(parts) >= 2, f"{keyword} {args}"
        sources.extend(parts[:-1])
    return sources


def test_dockerfile_copies_only_paths_that_exist() -> None:
    sources = copied_sources()
    assert sources
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"the Dockerfile copies paths missing from the repo: {missing}"


def test_dockerfile_copies_every_package_and_the_project_files() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    copied = {s.rstrip("/") for s in copied_sources()}
    wanted = {*packages, "pyproject.toml", str(project["project"]["readme"])}
    assert wanted <= copied, f"not copied: {sorted(wanted - copied)}"


def test_dockerfile_installs_the_project() -> None:
    runs = " ".join(args for kw, args in dockerfile_instructions() if kw == "RUN")
    assert re.search(r"pip install (--no-cache-dir )?\"?\.", runs), runs
