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

SERVICES = {"postgres", "redis", "migrate", "dispatcher", "worker", "watch"}
APP_SERVICES = {"migrate", "dispatcher", "worker"}
LONG_RUNNING = {"dispatcher", "worker"}
SHARED_ENV = "x-fleet-env"
PASSWORD_VARIABLE = "FLEET_REDIS_PASSWORD"
OWNER_PASSWORD = "FLEET_POSTGRES_PASSWORD"


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


# --- docker-compose.yml -----------------------------------------------------------------


def test_compose_parses_without_a_version_key() -> None:
    assert "version" not in compose(), "the Compose spec has no top-level version"
    assert isinstance(compose().get("services"), dict)


def test_the_six_services_exist() -> None:
    services = compose()["services"]
    assert {name for name, s in services.items() if "profiles" not in s} == SERVICES


def test_the_sim_demo_is_only_in_the_sim_profile() -> None:
    demo = service("demo")
    assert demo["profiles"] == ["sim"]
    assert as_argv(demo["entrypoint"]) == ["sh", "-ec"]
    [line] = demo["command"]
    assert str(line).endswith("exec python -m sim.demo")
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


def migrate_line() -> str:
    """The migrate service's shell line, as the shell gets it (Compose turns $$ into $)."""
    migrate = service("migrate")
    assert as_argv(migrate["entrypoint"]) == ["sh", "-ec"]
    [line] = migrate["command"]
    return str(line).replace("$$", "$")


def migrate_commands() -> list[list[str]]:
    """The `fleet` commands the migrate service's shell line runs, in order: the first
    inside its retry loop."""
    loop, *rest = migrate_line().split("&&")
    retried = re.search(r"until (fleet [^;]+);", loop)
    assert retried, f"migrate does not retry its first command: {loop}"
    commands = [shlex.split(retried.group(1)), *(shlex.split(part) for part in rest)]
    assert all(argv[0] == "fleet" for argv in commands), commands
    return [argv[1:] for argv in commands]


def test_only_migrate_connects_as_the_owner() -> None:
    """The owner's URL is the postgres service's own user; every long-running process
    connects with a login that migrate makes for its role, with a required password."""
    pg = environment(service("postgres"))
    owner = urlsplit(environment(service("migrate"))["FLEET_DATABASE_URL"])
    assert owner.username == pg.get("POSTGRES_USER", "postgres")
    given = {OWNER_PASSWORD: "0wner"}
    assert interpolate(str(owner.password), given) == interpolate(pg["POSTGRES_PASSWORD"], given)
    with pytest.raises(KeyError, match=OWNER_PASSWORD):
        interpolate(pg["POSTGRES_PASSWORD"], {})
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


# --- a real Compose, with the example env files -----------------------------------------

ENV_EXAMPLE = REPO / ".env.example"  # compose's own: secrets, handed out one by one
SETTINGS_EXAMPLE = REPO / "fleet.env.example"  # every fleet setting, handed out whole
SETTINGS_FILE = "fleet.env"
# What the checks below fill the empty values of .env.example with (each one distinct, so
# that where a value lands shows which variable it came from).
FILLED = {
    "FLEET_SECRET_KEYS": "k1:" + "A" * 43 + "=",
    "FLEET_SECRET_KEY_ID": "k1",
    "FLEET_CHAIN": '{"bitcoind_rpc_host":"btc.internal","bitcoind_rpc_password":"rpc-pw-7"}',
}
REGIONS = '{"eu-west-1":{"ami":"ami-0123456789abcdef0"}}'


def compose_binary() -> list[str]:
    """`docker compose` (v2) when it answers, else `docker-compose` (Debian's v1, which
    scripts/setup installs): both check a file with `config` without a Docker engine."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        found = subprocess.run([*argv, "version"], capture_output=True, timeout=60, check=False)
        if found.returncode == 0:
            return argv
    pytest.fail("no Docker Compose here: ./scripts/setup installs docker-compose (as root)")


def env_lines(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file (comments and blank lines left out)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, equals, value = line.partition("=")
            assert equals, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value
    return pairs


def filled_env() -> dict[str, str]:
    example = env_lines(ENV_EXAMPLE)
    return {k: v or FILLED.get(k, f"{k.lower()[6:]}-0123abcd") for k, v in example.items()}


def run_config(project: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    """`config` of every profile, from a project directory holding the example fleet.env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "COMPOSE_"))}
    return subprocess.run(
        [*compose_binary(), "-f", str(COMPOSE), "--project-directory", str(project),
         "--env-file", str(env_file), "--profile", "sim", "--profile", "api", "config"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("compose")
    settings = SETTINGS_EXAMPLE.read_text() + f"FLEET_REGIONS={REGIONS}\n"
    (where / SETTINGS_FILE).write_text(settings)
    (where / ".env").write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()))
    return where


@pytest.fixture(scope="module")
def resolved(project: Path) -> dict[str, Any]:
    """The file as Compose itself resolves it: interpolated, anchors merged, env_file read."""
    done = run_config(project, project / ".env")
    assert done.returncode == 0, done.stderr
    loaded = yaml.safe_load(done.stdout)
    assert isinstance(loaded, dict)
    return loaded


def resolved_env(resolved: dict[str, Any], name: str) -> dict[str, str]:
    return environment(resolved["services"][name])


def test_compose_accepts_the_file_with_the_example_env(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {*SERVICES, "api", "demo"}


def test_the_example_env_as_it_is_is_refused(project: Path) -> None:
    """Its passwords are empty: Compose must refuse to start, naming one of them."""
    empty = [k for k, v in env_lines(ENV_EXAMPLE).items() if not v]
    assert OWNER_PASSWORD in empty and PASSWORD_VARIABLE in empty
    done = run_config(project, ENV_EXAMPLE)
    assert done.returncode != 0
    assert any(name in done.stderr for name in empty), done.stderr


def test_every_fleet_process_gets_the_settings_file(resolved: dict[str, Any]) -> None:
    for name in ("migrate", "dispatcher", "worker", "watch", "api"):
        assert resolved_env(resolved, name).get("FLEET_REGIONS") == REGIONS, name
    assert "FLEET_REGIONS" not in resolved_env(resolved, "demo"), "the demo has its own cloud"


def test_each_secret_reaches_only_the_services_that_need_it(resolved: dict[str, Any]) -> None:
    needs = {
        OWNER_PASSWORD: {"postgres", "migrate", "demo"},
        PASSWORD_VARIABLE: {"redis", "migrate", "dispatcher", "worker", "api", "demo"},
        "FLEET_WORKER_DB_PASSWORD": {"migrate", "worker"},
        "FLEET_DISPATCHER_DB_PASSWORD": {"migrate", "dispatcher"},
        "FLEET_API_DB_PASSWORD": {"migrate", "api"},
        "FLEET_WATCH_DB_PASSWORD": {"migrate", "watch"},
        # The watch opens API root keys only (row-level security), to sign probe tokens.
        "FLEET_SECRET_KEYS": {"migrate", "worker", "watch"},
        "FLEET_CHAIN": {"worker"},
    }
    filled = filled_env()
    for variable, services in needs.items():
        secret = filled[variable]
        holders = {
            name
            for name, spec in resolved["services"].items()
            if any(secret in value for value in environment(spec).values())
            or any(secret in str(part) for part in spec.get("command") or [])
        }
        assert holders == services, variable


def test_the_workers_get_aws_credentials_and_the_ssh_key(resolved: dict[str, Any]) -> None:
    secrets = resolved["secrets"]
    assert set(secrets) == {"aws_credentials", "ssh_key"}
    example = env_lines(ENV_EXAMPLE)
    for name, variable in (("aws_credentials", "FLEET_HOST_AWS_CREDENTIALS"),
                           ("ssh_key", "FLEET_HOST_SSH_KEY")):  # fmt: skip
        assert "file" in secrets[name], name
        assert variable in str(compose()["secrets"][name]["file"]), name
        assert example[variable], f"{variable} has a default path in .env.example"
    mounted = {
        name: {str(s["source"] if isinstance(s, dict) else s) for s in spec.get("secrets", [])}
        for name, spec in resolved["services"].items()
    }
    assert mounted["worker"] == mounted["watch"] == {"aws_credentials", "ssh_key"}
    assert mounted["dispatcher"] == {"aws_credentials"}
    assert not {name for name, got in mounted.items() if got} - {"worker", "watch", "dispatcher"}
    for name in ("worker", "watch", "dispatcher"):
        env = resolved_env(resolved, name)
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws_credentials", name
    worker = resolved_env(resolved, "worker")
    assert worker["FLEET_SSH_KEY_PATH"] == "/run/secrets/ssh_key"
    assert worker["FLEET_CHAIN"] == FILLED["FLEET_CHAIN"], "the JSON arrives unchanged"


def test_the_demo_has_its_own_database_and_queue(resolved: dict[str, Any]) -> None:
    demo = resolved_env(resolved, "demo")
    for name in ("worker", "dispatcher", "api"):
        fleet = resolved_env(resolved, name)
        for url in ("FLEET_DATABASE_URL", "FLEET_REDIS_URL"):
            assert urlsplit(demo[url]).path != urlsplit(fleet[url]).path, (name, url)
    [line] = resolved["services"]["demo"]["command"]
    assert str(line).startswith("fleet db upgrade --create &&"), "its database is made if missing"
    assert resolved["services"]["demo"]["profiles"] == ["sim"]


def test_postgres_is_healthy_only_once_it_listens_on_tcp() -> None:
    """During the image's first start its init server listens on the socket only: a check
    without -h passes then, and migrate would start against a server about to stop."""
    [line] = as_argv(service("postgres")["healthcheck"]["test"])[1:]
    check = shlex.split(str(line))
    assert check[0] == "pg_isready"
    assert check[check.index("-h") + 1] in {"127.0.0.1", "localhost"}


def stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def run_migrate_line(tmp_path: Path, upgrade_failures: int) -> tuple[int, list[str]]:
    """The migrate line run by sh with `fleet` and `sleep` stood in for: the upgrade fails
    `upgrade_failures` times. The calls `fleet` got, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stub(bin_dir, "sleep", "exit 0\n")
    fleet = f"""echo "$*" >> {calls}
if [ "$1 $2" = "db upgrade" ]; then
  [ "$(grep -c '^db upgrade' {calls})" -gt {upgrade_failures} ] || exit 1
fi
"""
    stub(bin_dir, "fleet", fleet)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    line = migrate_line()
    done = subprocess.run(
        ["sh", "-ec", line], env=env, capture_output=True, timeout=60, check=False
    )
    return done.returncode, calls.read_text().splitlines()


def test_migrate_retries_the_upgrade_then_makes_the_logins(tmp_path: Path) -> None:
    code, calls = run_migrate_line(tmp_path, upgrade_failures=3)
    assert code == 0
    assert calls[:4] == ["db upgrade"] * 4
    assert [c.split()[:3] for c in calls[4:]] == [
        ["db", "create-login", login]
        for login in (
            "fleet_worker_login",
            "fleet_dispatcher_login",
            "fleet_api_login",
            "fleet_watch_login",
        )
    ]


def test_migrate_gives_up_after_its_attempts(tmp_path: Path) -> None:
    code, calls = run_migrate_line(tmp_path, upgrade_failures=1000)
    assert code != 0
    assert 3 <= len(calls) <= 30 and set(calls) == {"db upgrade"}


# --- the example env files: every setting, each with a comment --------------------------


def fleet_settings() -> set[str]:
    """Every variable the fleet's settings classes read, derived from the classes."""
    from api.settings import ApiSettings
    from worker.settings import FleetSettings

    names = {*FleetSettings.model_fields, *ApiSettings.model_fields}
    return {f"FLEET_{name.upper()}" for name in names}


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))


def named(path: Path) -> set[str]:
    return set(re.findall(r"\bFLEET_\w+", path.read_text()))


def test_the_examples_name_every_setting_the_code_reads() -> None:
    missing = fleet_settings() - named(SETTINGS_EXAMPLE) - named(ENV_EXAMPLE)
    assert not missing, f"not in fleet.env.example nor .env.example: {sorted(missing)}"


def test_env_example_sets_every_variable_compose_reads() -> None:
    assert compose_variables() == set(env_lines(ENV_EXAMPLE))


def test_the_examples_name_nothing_unknown() -> None:
    known = fleet_settings() | compose_variables()
    unknown = (named(SETTINGS_EXAMPLE) | named(ENV_EXAMPLE)) - known
    assert not unknown, f"no setting reads {sorted(unknown)}"


@pytest.mark.parametrize("path", [ENV_EXAMPLE, SETTINGS_EXAMPLE], ids=lambda p: p.name)
def test_every_setting_in_the_examples_has_a_comment(path: Path) -> None:
    """Each KEY=VALUE line (commented out or not) follows a comment or another setting of
    its group, never starts the file or a paragraph alone."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#? ?FLEET_\w+=", line):
            above = lines[:number]
            group_start = max((i for i, text in enumerate(above) if not text.strip()), default=-1)
            prose = [t for t in above[group_start + 1 :] if not re.match(r"#? ?FLEET_\w+=", t)]
            assert prose, f"{path.name}:{number + 1}: {line} has no comment above it"


def test_the_defaults_shown_are_the_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commented-out `# FLEET_X=value` shows the default: parsed, it must be it."""
    from api.settings import ApiSettings
    from worker.settings import FleetSettings

    shown = re.findall(r"^# (FLEET_\w+)=(.+)$", SETTINGS_EXAMPLE.read_text(), re.MULTILINE)
    assert len(shown) > 30
    required = {"FLEET_API_OIDC_ISSUER": "https://issuer", "FLEET_API_OIDC_AUDIENCE": "app"}
    for key, value in required.items():
        monkeypatch.setenv(key, value)
    for variable, value in shown:
        field = variable.removeprefix("FLEET_").lower()
        cls = FleetSettings if field in FleetSettings.model_fields else ApiSettings
        default = cls.model_fields[field].get_default()
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            assert getattr(cls(_env_file=None), field) == default, variable


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


def test_dockerfile_installs_the_lock_before_the_code() -> None:
    """Every build the same: the locked, hash-checked dependencies first, then the project
    alone (--no-deps: nothing the lock did not name)."""
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    [locked] = [r for r in runs if "-r requirements.lock" in r]
    assert "--require-hashes" in locked
    [project] = [r for r in runs if re.search(r"pip install .*--no-deps \.", r)]
    order = [args for _, args in dockerfile_instructions()]
    first_code = min(order.index(a) for a in order if a.startswith("models"))
    assert order.index(locked) < first_code < order.index(project)


# --- .dockerignore ----------------------------------------------------------------------

DOCKERIGNORE = REPO / ".dockerignore"
NEVER_IN_THE_CONTEXT = (".venv", ".env", "fleet.env", "secrets", ".git", ".fleet")


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    """An allow list: everything is left out, then each path the Dockerfile copies is let
    back in; so .venv, .env, fleet.env and secrets/ never reach the build."""
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", "the first pattern leaves everything out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {s.rstrip("/") for s in copied_sources()}
    assert allowed == copied
    assert not allowed & set(NEVER_IN_THE_CONTEXT)
    assert "**/__pycache__" in patterns
