"""The container setup: docker-compose.yml and the Dockerfile, checked without Docker."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import yaml

from sim.services import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

SERVICES = {"postgres", "redis", "migrate", "dispatcher", "worker"}
APP_SERVICES = {"migrate", "dispatcher", "worker"}
LONG_RUNNING = {"dispatcher", "worker"}
SHARED_ENV = "x-fleet-env"
REQUIRED_PASSWORDS = ("REDIS", "WORKER_DB", "DISPATCHER_DB", "API_DB")


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


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_accepts_the_file() -> None:
    if not docker_compose_available():
        pytest.skip("`docker compose version` fails here: no Docker Compose to validate with")
    passwords = {f"FLEET_{v}_PASSWORD": "0123abcd" * 2 for v in REQUIRED_PASSWORDS}
    env = {k: v for k, v in os.environ.items() if k not in passwords}
    result = compose_config({**env, **passwords})
    assert result.returncode == 0, result.stderr
    refused = compose_config(env)  # .env in REPO could still supply it: then it passes
    if not (REPO / ".env").exists():
        assert refused.returncode != 0
        assert "FLEET_REDIS_PASSWORD" in refused.stderr


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
    assert migrate_commands()[0] == ["db", "upgrade"]
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
    assert "FLEET_DATABASE_URL" not in shared, "each process has a login of its own"
    assert urlsplit(str(shared["FLEET_REDIS_URL"])).hostname == "redis"
    assert shared["FLEET_LOG_FORMAT"] == "json"
    for name in APP_SERVICES:
        own = environment(service(name))
        assert {k: v for k, v in own.items() if k in shared} == environment(
            {"environment": shared}
        ), name
        assert urlsplit(own["FLEET_DATABASE_URL"]).hostname == "postgres", name


def migrate_commands() -> list[list[str]]:
    """The `fleet` commands the migrate service's shell line runs, in order."""
    migrate = service("migrate")
    assert as_argv(migrate["entrypoint"]) == ["sh", "-ec"]
    [line] = migrate["command"]
    commands = [shlex.split(part) for part in str(line).split("&&")]
    assert all(argv[0] == "fleet" for argv in commands), commands
    return [argv[1:] for argv in commands]


def test_only_migrate_connects_as_the_owner() -> None:
    """The owner's URL is the postgres service's own user; every long-running process
    connects with a login that migrate makes for its role, with a required password."""
    pg = environment(service("postgres"))
    owner = urlsplit(environment(service("migrate"))["FLEET_DATABASE_URL"])
    assert owner.username == pg.get("POSTGRES_USER", "postgres")
    assert owner.password == pg["POSTGRES_PASSWORD"]
    assert owner.path.lstrip("/") == pg.get("POSTGRES_DB", owner.username)
    made = {
        argv[2]: (argv[argv.index("--role") + 1], argv[argv.index("--password-env") + 1])
        for argv in migrate_commands()
        if argv[:2] == ["db", "create-login"]
    }
    assert migrate_commands()[0] == ["db", "upgrade"]
    for name, role in (("worker", "worker"), ("dispatcher", "dispatcher"), ("api", "api")):
        url = urlsplit(environment(service(name))["FLEET_DATABASE_URL"])
        assert url.username in made, f"{name} connects as {url.username}, which migrate never makes"
        made_role, variable = made[str(url.username)]
        assert made_role == role, name
        assert url.password == f"${{{variable}}}", name
        required = environment(service("migrate"))[variable]
        assert required.startswith(f"${{{variable}:?"), f"{variable} must be required"
        assert url.path.lstrip("/") == owner.path.lstrip("/"), name


# --- Redis needs a password -------------------------------------------------------------

PASSWORD_VARIABLE = "FLEET_REDIS_PASSWORD"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; a missing required one raises."""

    def one(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise KeyError(f"{name}: {word}")
        return word if operator == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def redis_urls() -> dict[str, str]:
    return {
        "shared": str(compose()[SHARED_ENV]["FLEET_REDIS_URL"]),
        "demo": environment(service("demo"))["FLEET_REDIS_URL"],
    }


def test_redis_needs_a_password() -> None:
    """The default user is off, the fleet's user has the required variable as password,
    and every URL handed out logs in as that user with it."""
    command = as_argv(service("redis")["command"])
    assert command[:4] == ["redis-server", "--user", "default", "off"]
    fleet_user = command[4:]
    assert fleet_user[:3] == ["--user", "fleet", "on"]
    [password] = [part[1:] for part in fleet_user if part.startswith(">")]
    assert password.startswith(f"${{{PASSWORD_VARIABLE}:?"), "the password must be required"
    with pytest.raises(KeyError, match=PASSWORD_VARIABLE):
        interpolate(password, {})
    for name, url in redis_urls().items():
        parts = urlsplit(url)
        assert parts.hostname == "redis", name
        assert parts.username == "fleet", name
        assert parts.password == f"${{{PASSWORD_VARIABLE}}}", name
    # The healthcheck logs in too: without it, it would report a healthy Redis it cannot use.
    assert "--user" in as_argv(service("redis")["healthcheck"]["test"])
    assert environment(service("redis"))["REDISCLI_AUTH"].startswith(f"${{{PASSWORD_VARIABLE}:?")


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The compose file's redis command, run by the redis-server installed here."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server here to run the compose file's redis command with")
    env = {PASSWORD_VARIABLE: "3f1c" * 8}
    command = [interpolate(part, env) for part in as_argv(service("redis")["command"])]
    port = free_port()
    process = subprocess.Popen(
        [server, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port, env
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_compose_redis_lets_in_only_the_fleet_user(
    compose_redis: tuple[int, dict[str, str]],
) -> None:
    port, env = compose_redis
    anonymous = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):  # until it listens
        try:
            anonymous.ping()
        except redis.AuthenticationError:
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        pytest.fail("the compose redis command never answered, or answered without a password")
    for name, url in redis_urls().items():
        parts = urlsplit(interpolate(url, env))
        here = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}")
        assert redis.Redis.from_url(urlunsplit(here)).ping(), name
    check = as_argv(service("redis")["healthcheck"]["test"])[1:]
    check_env = {k: interpolate(v, env) for k, v in environment(service("redis")).items()}
    argv = [check[0], "-p", str(port), *check[1:]]
    assert subprocess.run(argv, env=check_env, capture_output=True, check=False).returncode == 0
    assert subprocess.run(argv, env={}, capture_output=True, check=False).returncode != 0


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
    commands = [as_argv(service(name)["command"]) for name in sorted(APP_SERVICES - {"migrate"})]
    commands += migrate_commands()
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
