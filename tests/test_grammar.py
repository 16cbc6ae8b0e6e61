"""One grammar for release versions and artifact URLs (models/grammar/*.ere): the same
corpus of good and bad values goes to every reader, and each must give the same verdict.
The readers are the Python validator, the database's CHECK constraints (as the logins
that write them), `fleet release add`, the HTTP API and the real host agent
(deploy/host/rln-hostctl install, run with bash in a temporary tree)."""

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from models import formats
from sim.oidc import Issuer, running_issuer
from tests.api_support import running_api, settings_for
from tests.conftest import fetch, role_url

AGENT = Path(__file__).resolve().parent.parent / "deploy" / "host" / "rln-hostctl"
SHA = "0" * 64
GOOD_URL = "s3://releases/rln.tar.gz"
GOOD_VERSION = "0.10.0"
Fleet = Callable[..., subprocess.CompletedProcess[str]]

VERSIONS = {
    "0.9.1": True,
    "v0.9.1": True,
    "0.0.0": True,
    "10.20.30": True,
    "123456789.0.0": True,
    "1.0.0-rc.1": True,
    "v0.10.0-rc.1": True,
    "1.0.0-rc-1": True,  # a hyphen inside a pre-release identifier is semver
    "1.0.0-alpha.beta.1.2": True,
    "1.0.0-" + "a" * 24: True,
    "1.0.0+build.7": False,  # no build metadata: the host keys releases by version
    "1.0.0-rc..1": False,
    "1.0.0-rc.": False,
    "1.0.0-.rc": False,
    "1.0.0-": False,
    "1.0.0-rc.1.2.3.4": False,
    "1.0.0-" + "a" * 25: False,
    "1234567890.0.0": False,
    "01.0.0": False,
    "1.00.0": False,
    "1.0": False,
    "V1.0.0": False,
    "latest": False,
    "../0.9.1": False,
    "0.9.1/x": False,
    "0.9.1 ": False,
    " 0.9.1": False,
    "0.9.1\n": False,
    "0.9.1\t": False,
    "1.0.0-rc\t1": False,
    "1.0.0-rc_1": False,
    "1.0.0-rcé": False,
    "1.0.0-r\u0441": False,  # a Cyrillic letter that looks Latin
    "": False,
}

URLS = {
    "https://example.com/rln/rgb-lightning-node-0.10.0.tar.gz": True,
    "https://github.com/o/r/releases/download/v0.10.0/rln-v0.10.0-x86_64-linux.tar.gz": True,
    "s3://releases/rln-0.10.0.tar.gz": True,
    "s3://my.bucket-1/a/b/c.tgz": True,
    "http://127.0.0.1:8080/a.tgz": True,
    "https://example.com/a%20b,c=d+e~f.tgz": True,
    "https://example.com/" + "a" * 255: True,
    "https://example.com/a\tb.tgz": False,
    "https://example.com/a b.tgz": False,
    "https://example.com/a.tgz\n": False,
    "https://example.com/a.tgz\r": False,
    "ftp://example.com/a.tgz": False,
    "file:///tmp/a.tgz": False,
    "/tmp/a.tgz": False,
    "": False,
    "https://example.com": False,
    "https://example.com/": False,
    "https://example.com//a.tgz": False,
    "https://example.com/" + "a" * 256: False,
    "https://user:secret@example.com/a.tgz": False,
    "https://example.com/a.tgz?X-Amz-Signature=1": False,
    "https://example.com/a.tgz#top": False,
    "https://example.com/a'b.tgz": False,
    "https://example.com/$(reboot).tgz": False,
    "https://exämple.com/a.tgz": False,
    "HTTPS://example.com/a.tgz": False,
    "s3://Bucket/a.tgz": False,
    "s3://b/a.tgz": False,
    "s3://-bucket/a.tgz": False,
}


def verdicts(corpus: dict[str, bool], judge: Callable[[str], bool]) -> dict[str, bool]:
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(corpus, pool.map(judge, corpus), strict=True))


def test_the_corpus_is_what_the_python_grammar_says() -> None:
    assert verdicts(VERSIONS, lambda v: formats.problem("version", v) is None) == VERSIONS
    assert verdicts(URLS, lambda u: formats.problem("artifact_url", u) is None) == URLS


def _accepted(url: str, statement: str, value: str, *others: object) -> bool:
    """Whether the database takes the row (inside a transaction that is rolled back)."""
    with psycopg.connect(url) as connection:
        try:
            connection.execute(statement, (value, *others))
        except psycopg.errors.CheckViolation:
            return False
        finally:
            connection.rollback()
    return True


def test_the_database_gives_the_same_verdicts(db_url: str) -> None:
    release = "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)"
    operator = role_url(db_url, "operator")
    assert verdicts(VERSIONS, lambda v: _accepted(operator, release, v, GOOD_URL, SHA)) == VERSIONS
    by_url = "INSERT INTO releases (artifact_url, version, sha256) VALUES (%s, %s, %s)"
    assert verdicts(URLS, lambda u: _accepted(operator, by_url, u, GOOD_VERSION, SHA)) == URLS
    node = (
        "INSERT INTO nodes (current_version, name, owner, region, instance_type, network)"
        " VALUES (%s, 'alpha', 'tester', 'eu-west-1', 't3.small', 'regtest')"
    )
    app = role_url(db_url, "app")
    assert verdicts(VERSIONS, lambda v: _accepted(app, node, v)) == VERSIONS


def test_the_grammar_files_are_the_database_constraints(db_url: str) -> None:
    definitions = dict(
        fetch(db_url, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint")
    )
    pairs = {
        "releases_version_format": formats.VERSION,
        "nodes_current_version_format": formats.VERSION,
        "nodes_target_version_format": formats.VERSION,
        "releases_artifact_url_format": formats.ARTIFACT_URL,
    }
    for constraint, pattern in pairs.items():
        assert f"'{pattern}'" in str(definitions[constraint]), constraint


def _cli_verdict(fleet: Fleet, version: str, url: str) -> bool:
    done = fleet("release", "add", version, url, SHA)
    if done.returncode == 0:
        assert done.stdout == f"release {version} added\n", done
        return True
    # Refused with one clear line, never a traceback.
    assert done.returncode in (1, 2), done
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: bad "), done
    assert done.stderr.rstrip("\n").count("\n") == 0, done
    return False


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
@pytest.mark.timeout(600)  # one `fleet` process per value
def test_fleet_release_add_gives_the_same_verdicts(fleet: Fleet) -> None:
    assert verdicts(VERSIONS, lambda v: _cli_verdict(fleet, v, GOOD_URL)) == VERSIONS
    numbered = {url: f"2.0.{i}" for i, url in enumerate(URLS)}
    assert verdicts(URLS, lambda u: _cli_verdict(fleet, numbered[u], u)) == URLS


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


def test_the_api_gives_the_same_verdicts(db_url: str, issuer: Issuer) -> None:
    """The API takes versions (a node's release on creation, an update's target); it takes
    no artifact URLs."""
    numbered = {version: f"n{i}" for i, version in enumerate(VERSIONS)}
    with running_api(settings_for(db_url, issuer), issuer) as api, api.as_("alice") as alice:

        def accepted(version: str) -> bool:
            body = {"name": numbered[version], "version": version}
            response = alice.post("/nodes", json=body)
            assert response.status_code in (201, 422), response.text
            return response.status_code == 201

        assert verdicts(VERSIONS, accepted) == VERSIONS
        node = alice.post("/nodes", json={"name": "target"}).json()["id"]

        def accepted_as_target(version: str) -> bool:
            response = alice.post(f"/nodes/{node}/update", json={"version": version})
            # A well formed version gets past validation, to be refused as a release the
            # fleet does not know (a problem without field errors); a malformed one is a
            # field error of body.version.
            assert response.status_code == 422, response.text
            errors = response.json().get("errors") or []
            assert [e["location"] for e in errors] in ([], ["body.version"]), response.text
            return not errors

        assert verdicts(VERSIONS, accepted_as_target) == VERSIONS


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    """A host tree whose node is running: install then refuses right after checking its
    arguments, with "node is running", and never downloads anything."""
    systemctl = tmp_path / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    for name in ("etc", "opt", "data", "tmp"):
        (tmp_path / name).mkdir()
    return {
        "PATH": os.environ["PATH"],
        # A UTF-8 locale, as sudo may pass on: ranges must still mean ASCII.
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(tmp_path / "tmp"),
        "RLN_ETC": str(tmp_path / "etc"),
        "RLN_OPT": str(tmp_path / "opt"),
        "RLN_DATA": str(tmp_path / "data"),
        "SYSTEMCTL": str(systemctl),
    }


def _agent_verdict(env: dict[str, str], version: str, url: str) -> bool:
    done = subprocess.run(
        ["bash", str(AGENT), "install", version, url, SHA],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, ""), done
    assert done.stderr.count("\n") == 1, done
    if done.stderr.startswith("node is running: stop it before installing"):
        return True
    assert done.stderr.startswith(("invalid version: ", "invalid URL: ")), done
    return False


def test_the_host_agent_gives_the_same_verdicts(agent_env: dict[str, str]) -> None:
    assert verdicts(VERSIONS, lambda v: _agent_verdict(agent_env, v, GOOD_URL)) == VERSIONS
    assert verdicts(URLS, lambda u: _agent_verdict(agent_env, GOOD_VERSION, u)) == URLS


def test_the_host_agent_embeds_the_grammar_files_verbatim() -> None:
    """The agent is one file on the host, so it carries a copy; this keeps it the same."""
    text = AGENT.read_text()
    copies = {"VERSION_ERE": formats.VERSION, "ARTIFACT_URL_ERE": formats.ARTIFACT_URL}
    for name, pattern in copies.items():
        [copy] = re.findall(rf"^readonly {name}='([^']*)'$", text, re.MULTILINE)
        assert copy == pattern, name


def test_the_grammar_is_the_portable_subset() -> None:
    """No construct that one of the three engines reads differently: no backslash but
    before a dot, no POSIX classes, lookaround or lazy quantifiers, bounds <= 255
    (Postgres's limit)."""
    for pattern in (formats.VERSION, formats.ARTIFACT_URL):
        assert pattern.startswith("^") and pattern.endswith("$")
        assert re.sub(r"\\\.", "", pattern).count("\\") == 0
        assert not re.search(r"\[:|\(\?|[*+?}]\?", pattern)
        bounds = re.findall(r"\{([0-9]+)(?:,([0-9]+))?\}", pattern)
        assert bounds and all(int(n or 0) <= 255 for pair in bounds for n in pair)
