"""The real host agent (deploy/host/rln-hostctl) run with bash in a temporary tree:
systemctl and aws are small fakes, releases are real tar.gz files served over HTTP on
loopback. Also checks the recipe files that install the agent."""

import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

HOST_DIR = Path(__file__).resolve().parent.parent / "deploy" / "host"
AGENT = HOST_DIR / "rln-hostctl"
KEY = "ab" * 32
OTHER_KEY = "cd" * 32
UNIT = "rgb-lightning-node"
PROVISIONED = ("rln-hostctl", "rgb-lightning-node.service", "install-host.sh", "90-rln-fleet.cfg")

FAKE_SYSTEMCTL = """#!/usr/bin/env bash
# Keeps the unit's state in a file; a file named fail-start makes start fail.
set -euo pipefail
echo "$*" >>"$FAKE_STATE/systemctl.log"
[[ ${2:-} == --quiet ]] && unit=$3 || unit=${2:-}
[[ $unit == rgb-lightning-node ]] || { echo "Unit $unit not found." >&2; exit 5; }
case $1 in
    is-active) [[ $(cat "$FAKE_STATE/state" 2>/dev/null) == running ]] ;;
    start)
        if [[ -e $FAKE_STATE/fail-start ]]; then
            echo "Job for rgb-lightning-node.service failed because the control process exited." >&2
            exit 1
        fi
        # A daemon that exits at once (a bad flag, a port taken): Type=exec still says ok.
        if [[ -e $FAKE_STATE/exits-at-once ]]; then
            echo stopped >"$FAKE_STATE/state"
            echo "Error: Address already in use (os error 98)" >>"$FAKE_STATE/journal"
        else
            echo running >"$FAKE_STATE/state"
        fi ;;
    show) cat "$FAKE_STATE/restarts" 2>/dev/null || echo 0 ;;
    stop) echo stopped >"$FAKE_STATE/state" ;;
    enable) touch "$FAKE_STATE/enabled" ;;
    disable) rm -f "$FAKE_STATE/enabled" ;;
    reset-failed) ;;
    *) echo "fake systemctl: unknown $1" >&2; exit 1 ;;
esac
"""

FAKE_JOURNALCTL = """#!/usr/bin/env bash
# `journalctl -u UNIT -n 1 --no-pager -o cat`: the last line the fake unit logged.
tail -n 1 "$FAKE_STATE/journal" 2>/dev/null || true
"""

FAKE_AWS = """#!/usr/bin/env bash
# `aws s3 cp --only-show-errors [--metadata K=V] SRC DST` with s3://bucket/key kept under
# $FAKE_S3 (the metadata beside it, in KEY.metadata).
set -euo pipefail
[[ $1 == s3 && $2 == cp && $3 == --only-show-errors ]] || { echo "fake aws: $*" >&2; exit 2; }
metadata=""
if [[ $4 == --metadata ]]; then metadata=$5; shift 2; fi
local_path() { if [[ $1 == s3://* ]]; then echo "$FAKE_S3/${1#s3://}"; else echo "$1"; fi; }
src=$(local_path "$4")
dst=$(local_path "$5")
if [[ ! -f $src ]]; then
    echo "fatal error: An error occurred (404) when calling the HeadObject operation:" \
        "Key \\"${4#s3://*/}\\" does not exist" >&2
    exit 1
fi
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
if [[ -n $metadata ]]; then printf '%s\\n' "$metadata" >"$dst.metadata"; fi
"""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class Host:
    root: Path
    env: dict[str, str]

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def opt(self) -> Path:
        return self.root / "opt"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def s3(self) -> Path:
        return self.root / "s3"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def run(self, *args: str) -> Result:
        done = subprocess.run(
            ["bash", str(AGENT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> str:
        """Runs a command that must succeed; the contract is one stdout line, no stderr."""
        result = self.run(*args)
        assert (result.code, result.stderr) == (0, ""), result
        assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), result
        return result.stdout.rstrip("\n")

    def fails(self, *args: str, code: int = 1) -> str:
        """Runs a command that must fail; the contract is one stderr line, no stdout."""
        result = self.run(*args)
        assert (result.code, result.stdout) == (code, ""), result
        assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result
        return result.stderr.rstrip("\n")

    def systemctl_calls(self) -> list[str]:
        log = self.state / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def set_running(self, running: bool) -> None:
        (self.state / "state").write_text("running\n" if running else "stopped\n")

    def leftovers(self) -> list[str]:
        """Temporary files the agent must never leave behind."""
        hidden = [*self.opt.glob(".install.*"), *self.opt.glob(".current.new")]
        temporary = [*self.etc.glob(".root-public-key.*"), *(self.root / "tmp").iterdir()]
        return sorted(p.name for p in [*hidden, *temporary])


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    root = tmp_path / "host"
    for name in ("etc", "opt", "data", "backups", "s3", "state", "bin", "tmp"):
        (root / name).mkdir(parents=True)
    env = {
        "PATH": os.environ["PATH"],
        "LC_ALL": "C",
        "TMPDIR": str(root / "tmp"),
        "RLN_ETC": str(root / "etc"),
        "RLN_OPT": str(root / "opt"),
        "RLN_DATA": str(root / "data"),
        "RLN_BACKUPS": str(root / "backups"),
        "SYSTEMCTL": _executable(root / "bin" / "systemctl", FAKE_SYSTEMCTL),
        "AWS": _executable(root / "bin" / "aws", FAKE_AWS),
        "JOURNALCTL": _executable(root / "bin" / "journalctl", FAKE_JOURNALCTL),
        "RLN_START_SETTLE_SECONDS": "0",
        "FAKE_STATE": str(root / "state"),
        "FAKE_S3": str(root / "s3"),
    }
    return Host(root, env)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class ReleaseServer:
    directory: Path
    base_url: str
    requests: list[str]

    def publish(self, version: str, *, nested: bool = False, binary: bool = True) -> "Release":
        """A release archive as forks publish them; the binary prints its version."""
        name = f"rgb-lightning-node-{version}-x86_64-unknown-linux-gnu.tar.gz"
        data = _archive(version, nested=nested, binary=binary)
        (self.directory / name).write_bytes(data)
        return Release(version, f"{self.base_url}/{name}", hashlib.sha256(data).hexdigest())


@dataclass
class Release:
    version: str
    url: str
    sha256: str

    @property
    def args(self) -> tuple[str, str, str, str]:
        return ("install", self.version, self.url, self.sha256)


def _archive(version: str, *, nested: bool, binary: bool) -> bytes:
    prefix = f"rgb-lightning-node-{version}/" if nested else ""
    members = {f"{prefix}README.md": b"RGB Lightning Node\n"}
    if binary:
        members[f"{prefix}rgb-lightning-node"] = f"#!/bin/sh\necho {version}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755 if name.endswith("rgb-lightning-node") else 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def releases(tmp_path: Path) -> Iterator[ReleaseServer]:
    directory = tmp_path / "www"
    directory.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ReleaseServer(directory, f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


# status and set-root-key


def test_status_of_a_fresh_host(host: Host) -> None:
    assert host.ok("status") == "state=stopped version=none root_key=none"


def test_set_root_key_writes_it_atomically_and_is_idempotent(host: Host) -> None:
    assert host.ok("set-root-key", KEY) == "set"
    key_file = host.etc / "root-public-key"
    assert key_file.read_text() == f"ROOT_PUBLIC_KEY={KEY}\n"
    assert key_file.stat().st_mode & 0o777 == 0o644
    assert host.ok("set-root-key", KEY) == "unchanged"
    assert host.ok("status") == f"state=stopped version=none root_key={KEY}"
    assert host.ok("set-root-key", OTHER_KEY) == "set"
    assert host.ok("status") == f"state=stopped version=none root_key={OTHER_KEY}"
    assert host.leftovers() == []


@pytest.mark.parametrize(
    "bad_key",
    ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, f" {KEY}", f"{KEY}\n", ""],
    ids=["uppercase", "short", "long", "not-hex", "space", "newline", "empty"],
)
def test_set_root_key_refuses_a_bad_key(host: Host, bad_key: str) -> None:
    host.ok("set-root-key", KEY)
    message = host.fails("set-root-key", bad_key)
    assert message == "invalid root public key: need 64 lowercase hex characters"
    assert host.ok("status").endswith(f"root_key={KEY}")


# install


def test_install_downloads_verifies_and_switches(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    assert host.ok(*release.args) == "installed 0.9.1"
    binary = host.opt / "current" / "rgb-lightning-node"
    assert os.readlink(host.opt / "current") == "releases/0.9.1"
    assert os.access(binary, os.X_OK)
    assert subprocess.run([binary], capture_output=True, text=True, check=False).stdout == "0.9.1\n"
    assert host.ok("status") == "state=stopped version=0.9.1 root_key=none"
    assert host.leftovers() == []


def test_a_stalled_download_ends_on_its_own_with_one_line(host: Host) -> None:
    """It holds the host's lock: it must end before the fleet's own command timeout."""
    host.env["AWS"] = _executable(host.root / "bin" / "stalling-aws", "#!/bin/sh\nexec sleep 60\n")
    host.env["RLN_DOWNLOAD_SECONDS"] = "1"
    started = time.monotonic()
    error = host.fails("install", "0.9.1", "s3://releases/rln-0.9.1.tar.gz", "a" * 64)
    assert error.startswith("download of 0.9.1 from s3://releases/rln-0.9.1.tar.gz failed")
    assert time.monotonic() - started < 20
    assert host.leftovers() == []


def test_install_again_is_already_installed_without_a_download(
    host: Host, releases: ReleaseServer
) -> None:
    release = releases.publish("0.9.1")
    host.ok(*release.args)
    downloads = len(releases.requests)
    assert host.ok(*release.args) == "already installed"
    assert len(releases.requests) == downloads


def test_install_switches_between_installed_versions(host: Host, releases: ReleaseServer) -> None:
    old, new = releases.publish("0.9.1"), releases.publish("v0.10.0-rc.1", nested=True)
    assert host.ok(*old.args) == "installed 0.9.1"
    assert host.ok(*new.args) == "installed v0.10.0-rc.1"
    assert host.ok("status").startswith("state=stopped version=v0.10.0-rc.1 ")
    downloads = len(releases.requests)
    # Going back to a release still on disk and verified needs no download.
    assert host.ok(*old.args) == "installed 0.9.1"
    assert len(releases.requests) == downloads
    assert os.readlink(host.opt / "current") == "releases/0.9.1"


def test_install_takes_the_binary_one_directory_down(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.2", nested=True)
    assert host.ok(*release.args) == "installed 0.9.2"
    assert (host.opt / "releases" / "0.9.2" / "rgb-lightning-node").is_file()
    assert (host.opt / "releases" / "0.9.2" / "README.md").is_file()


def test_install_from_s3(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    artifact = host.s3 / "releases-bucket" / "rln" / "0.9.1.tar.gz"
    artifact.parent.mkdir(parents=True)
    shutil.copy(releases.directory / release.url.rsplit("/", 1)[1], artifact)
    uri = "s3://releases-bucket/rln/0.9.1.tar.gz"
    assert host.ok("install", "0.9.1", uri, release.sha256) == "installed 0.9.1"
    assert host.ok("status").startswith("state=stopped version=0.9.1 ")


def test_install_accepts_an_uppercase_checksum(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    assert host.ok("install", "0.9.1", release.url, release.sha256.upper()) == "installed 0.9.1"


def test_checksum_mismatch_leaves_nothing_behind(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    wrong = "0" * 64
    message = host.fails("install", "0.9.1", release.url, wrong)
    assert message == (f"checksum mismatch for 0.9.1: expected {wrong}, got {release.sha256}")
    assert not (host.opt / "releases" / "0.9.1").exists()
    assert not (host.opt / "current").exists()
    assert host.leftovers() == []
    assert host.ok("status") == "state=stopped version=none root_key=none"


def test_checksum_mismatch_keeps_the_current_release(host: Host, releases: ReleaseServer) -> None:
    host.ok(*releases.publish("0.9.1").args)
    release = releases.publish("0.9.2")
    host.fails("install", "0.9.2", release.url, "f" * 64)
    assert os.readlink(host.opt / "current") == "releases/0.9.1"
    assert sorted(p.name for p in (host.opt / "releases").iterdir()) == ["0.9.1"]


def test_install_reports_a_failed_download(host: Host, releases: ReleaseServer) -> None:
    url = f"{releases.base_url}/missing.tar.gz"
    message = host.fails("install", "0.9.1", url, "0" * 64)
    assert message == (
        f"download of 0.9.1 from {url} failed: curl: (22) The requested URL returned error: 404"
    )
    assert host.leftovers() == []
    assert not (host.opt / "releases" / "0.9.1").exists()


def test_install_reports_a_missing_s3_object(host: Host) -> None:
    uri = "s3://releases-bucket/none.tar.gz"
    message = host.fails("install", "0.9.1", uri, "0" * 64)
    assert message.startswith(f"download of 0.9.1 from {uri} failed: fatal error: ")


def test_install_refuses_an_archive_without_the_binary(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1", binary=False)
    assert host.fails(*release.args) == "no rgb-lightning-node in the 0.9.1 archive"
    assert not (host.opt / "releases" / "0.9.1").exists()
    assert host.leftovers() == []


def test_install_refuses_while_running(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    host.set_running(True)
    assert host.fails(*release.args) == "node is running: stop it before installing 0.9.1"
    assert releases.requests == []
    assert not (host.opt / "releases" / "0.9.1").exists()


@pytest.mark.parametrize("version", ["0.9", "latest", "../0.9.1", "0.9.1/x", "v0.9.1-", "0.9.1 "])
def test_install_refuses_a_bad_version(host: Host, version: str) -> None:
    message = host.fails("install", version, "https://example.invalid/a.tgz", "0" * 64)
    assert message == f"invalid version: {version} (like 0.9.1 or v0.9.1-rc.1)"


@pytest.mark.parametrize("url", ["ftp://host/a.tgz", "file:///tmp/a.tgz", "/tmp/a.tgz", ""])
def test_install_refuses_a_bad_url(host: Host, url: str) -> None:
    assert host.fails("install", "0.9.1", url, "0" * 64) == (
        "invalid URL: need https://, http:// or s3://"
    )


@pytest.mark.parametrize("sha256", ["0" * 63, "g" * 64, "0" * 65, ""])
def test_install_refuses_a_bad_checksum(host: Host, sha256: str) -> None:
    assert host.fails("install", "0.9.1", "https://example.invalid/a.tgz", sha256) == (
        "invalid SHA256: need 64 hex characters"
    )


# start and stop


def test_start_refuses_without_a_root_key(host: Host, releases: ReleaseServer) -> None:
    host.ok(*releases.publish("0.9.1").args)
    assert host.fails("start") == "no root public key set: run set-root-key first"
    assert not any(call.startswith("start") for call in host.systemctl_calls())


def test_start_refuses_without_a_release(host: Host) -> None:
    host.ok("set-root-key", KEY)
    assert host.fails("start") == "no release installed: run install first"
    assert not any(call.startswith("start") for call in host.systemctl_calls())


def test_start_and_stop_are_idempotent(host: Host, releases: ReleaseServer) -> None:
    host.ok("set-root-key", KEY)
    host.ok(*releases.publish("0.9.1").args)
    assert host.ok("start") == "started"
    assert host.ok("status") == f"state=running version=0.9.1 root_key={KEY}"
    assert host.ok("start") == "already running"
    assert host.ok("stop") == "stopped"
    assert host.ok("status") == f"state=stopped version=0.9.1 root_key={KEY}"
    assert host.ok("stop") == "already stopped"
    starts = [call for call in host.systemctl_calls() if call.startswith("start ")]
    assert starts == [f"start {UNIT}"]


def test_the_unit_is_enabled_exactly_while_the_node_should_run(
    host: Host, releases: ReleaseServer
) -> None:
    """So that a rebooted host runs the node again only if the fleet left it running."""
    host.ok("set-root-key", KEY)
    host.ok(*releases.publish("0.9.1").args)
    enabled = host.state / "enabled"
    assert not enabled.exists()
    host.ok("start")
    assert enabled.exists()
    host.ok("stop")
    assert not enabled.exists()


def test_a_failing_start_is_one_line(host: Host, releases: ReleaseServer) -> None:
    host.ok("set-root-key", KEY)
    host.ok(*releases.publish("0.9.1").args)
    (host.state / "fail-start").touch()
    assert host.fails("start") == (
        f"systemctl start {UNIT} failed: Job for {UNIT}.service failed "
        "because the control process exited."
    )
    assert host.ok("status").startswith("state=stopped ")


def test_a_daemon_that_exits_at_once_fails_start_with_its_last_log_line(
    host: Host, releases: ReleaseServer
) -> None:
    """Type=exec: `systemctl start` succeeds once the binary runs, even if it dies then."""
    host.ok("set-root-key", KEY)
    host.ok(*releases.publish("0.9.1").args)
    (host.state / "exits-at-once").touch()
    assert host.fails("start") == (
        f"{UNIT} did not stay up after start: Error: Address already in use (os error 98)"
    )


def test_a_daemon_restarted_while_settling_fails_start(host: Host, releases: ReleaseServer) -> None:
    """Restart=on-failure can bring a crashing daemon back before the check looks."""
    host.ok("set-root-key", KEY)
    host.ok(*releases.publish("0.9.1").args)
    counter = host.state / "restarts"
    counter.write_text("0\n")
    host.env["SYSTEMCTL"] = _executable(
        host.root / "bin" / "restarting-systemctl",
        f'#!/bin/sh\nif [ "$1" = show ]; then n=$(cat {counter}); echo "$n";'
        f' echo $((n + 1)) > {counter}; exit 0; fi\nexec {host.env["SYSTEMCTL"]} "$@"\n',
    )
    assert host.fails("start") == f"{UNIT} did not stay up after start: (the unit logged nothing)"


# backup-upload


def test_backup_upload_copies_the_file_to_s3_with_its_checksum(host: Host) -> None:
    backup = host.backups / "node-1.rlnbackup"
    backup.write_bytes(b"encrypted backup")
    sha256 = hashlib.sha256(b"encrypted backup").hexdigest()
    uri = "s3://rln-fleet-backups/backups/alice/node-1/node-1.rlnbackup"
    assert host.ok("backup-upload", str(backup), uri) == f"{uri} size=16 sha256={sha256}"
    stored = host.s3 / "rln-fleet-backups" / "backups" / "alice" / "node-1" / "node-1.rlnbackup"
    assert stored.read_bytes() == b"encrypted backup"
    assert stored.with_name(stored.name + ".metadata").read_text() == f"sha256={sha256}\n"
    # The host keeps its copy until the fleet saw it in S3; uploading again is harmless.
    assert backup.exists()
    assert host.ok("backup-upload", str(backup), uri) == f"{uri} size=16 sha256={sha256}"


def test_backup_remove_removes_the_file_once(host: Host) -> None:
    backup = host.backups / "node-1.rlnbackup"
    backup.write_bytes(b"encrypted backup")
    assert host.ok("backup-remove", str(backup)) == "removed"
    assert not backup.exists()
    assert host.ok("backup-remove", str(backup)) == "already removed"


def test_backup_upload_refuses_a_missing_file(host: Host) -> None:
    path = str(host.backups / "none.rlnbackup")
    message = host.fails("backup-upload", path, "s3://bucket/key")
    assert message == f"no such backup file: {path}"


@pytest.mark.parametrize("command", ["backup-upload", "backup-remove"])
def test_backup_commands_refuse_files_outside_the_backup_dir(host: Host, command: str) -> None:
    outside = host.root / "secret"
    outside.write_text("not a backup")
    (host.backups / "link").symlink_to(outside)
    (host.data / "mnemonic").write_text("the wallet")
    sneaky = f"{host.backups}/../secret"
    paths = (str(outside), sneaky, str(host.backups / "link"), str(host.data / "mnemonic"))
    for path in paths:
        args = (path, "s3://bucket/key") if command == "backup-upload" else (path,)
        message = host.fails(command, *args)
        assert message == f"refusing {path}: not a file in {host.backups}"
    assert list(host.s3.iterdir()) == []
    assert outside.exists() and (host.data / "mnemonic").exists()


@pytest.mark.parametrize("uri", ["https://bucket/key", "s3://bucket", "s3://bucket/", "s3:///k"])
def test_backup_upload_refuses_a_bad_uri(host: Host, uri: str) -> None:
    backup = host.backups / "b.rlnbackup"
    backup.write_text("x")
    assert host.fails("backup-upload", str(backup), uri) == f"invalid S3 URI: {uri}"


# backup-download (a replaced node's backup, from a presigned link)

PRESIGNED_QUERY = "?X-Amz-Signature=" + "5e" * 32


def test_backup_download_fetches_verifies_and_keeps_the_file(
    host: Host, releases: ReleaseServer
) -> None:
    (releases.directory / "node-1.rlnbackup").write_bytes(b"encrypted backup")
    sha256 = hashlib.sha256(b"encrypted backup").hexdigest()
    url = f"{releases.base_url}/node-1.rlnbackup{PRESIGNED_QUERY}"
    path = str(host.backups / "restore-node-1-1.rlnbackup")
    assert host.ok("backup-download", url, path, sha256) == f"{path} size=16 sha256={sha256}"
    assert Path(path).read_bytes() == b"encrypted backup"
    # For the daemon's user to read (/restore), nobody else.
    assert oct(Path(path).stat().st_mode & 0o777) == "0o600"
    assert Path(path).stat().st_uid == host.backups.stat().st_uid
    # Again: the file is there and matches, nothing is downloaded.
    assert host.ok("backup-download", url, path, sha256) == f"{path} size=16 sha256={sha256}"
    assert len(releases.requests) == 1
    assert host.leftovers() == []


def test_backup_download_keeps_nothing_that_does_not_match(
    host: Host, releases: ReleaseServer
) -> None:
    (releases.directory / "node-1.rlnbackup").write_bytes(b"another backup")
    url = f"{releases.base_url}/node-1.rlnbackup{PRESIGNED_QUERY}"
    path = str(host.backups / "restore-node-1-1.rlnbackup")
    message = host.fails("backup-download", url, path, "ab" * 32)
    assert message.startswith(f"checksum mismatch for {path}: expected {'ab' * 32}, got ")
    assert list(host.backups.iterdir()) == [] and host.leftovers() == []


def test_backup_download_never_repeats_the_link(host: Host, releases: ReleaseServer) -> None:
    url = f"{releases.base_url}/missing.rlnbackup{PRESIGNED_QUERY}"
    path = str(host.backups / "restore-node-1-1.rlnbackup")
    message = host.fails("backup-download", url, path, "ab" * 32)
    assert message.startswith(f"download of the backup for {path} failed: ")
    assert "X-Amz-Signature" not in message and releases.base_url not in message
    assert list(host.backups.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "path", "sha256", "message"),
    [
        ("s3://bucket/key", "restore.rlnbackup", "ab" * 32,
         "invalid URL: need a presigned https:// link"),
        ("https://host/key", "restore.rlnbackup", "xyz", "invalid SHA256: need 64 hex characters"),
        ("https://host/key", "../secret", "ab" * 32, None),
    ],
)  # fmt: skip
def test_backup_download_refuses_bad_arguments(
    host: Host, url: str, path: str, sha256: str, message: str | None
) -> None:
    where = f"{host.backups}/{path}"
    expected = message or f"refusing {where}: not a file in {host.backups}"
    assert host.fails("backup-download", url, where, sha256) == expected


# set-network


def test_set_network_writes_the_units_environment_file(host: Host) -> None:
    assert host.ok("set-network", "mainnet") == "set"
    assert (host.etc / "node.env").read_text() == "NETWORK=mainnet\n"
    assert host.ok("set-network", "mainnet") == "unchanged"
    assert host.ok("set-network", "testnet4") == "set"
    assert (host.etc / "node.env").read_text() == "NETWORK=testnet4\n"
    assert list(host.etc.glob(".node.env.*")) == []


def test_set_network_refuses_a_running_node_and_a_bad_network(host: Host) -> None:
    host.ok("set-network", "testnet")
    host.set_running(True)
    assert host.ok("set-network", "testnet") == "unchanged"
    message = host.fails("set-network", "mainnet")
    assert message == "node is running on testnet: stop it before changing its network"
    assert host.fails("set-network", "bitcoin") == (
        "invalid network: bitcoin (one of regtest | testnet | testnet4 | signet | mainnet)"
    )
    assert (host.etc / "node.env").read_text() == "NETWORK=testnet\n"


# wallet-aside


def wallet_files(host: Host) -> None:
    """A storage dir as the daemon leaves it: the mnemonic, LDK state, logs, revocations."""
    (host.data / ".ldk").mkdir()
    (host.data / "logs").mkdir()
    (host.data / "mnemonic").write_bytes(b"sealed mnemonic of format 1")
    (host.data / ".ldk" / "channel_manager").write_bytes(b"channel state")
    (host.data / "logs" / "log").write_text("a log line\n")
    (host.data / "revoked_tokens.txt").write_text("0a0b\n")
    host.data.chmod(0o750)


def asides(host: Host) -> list[Path]:
    return sorted(host.root.glob("data-aside-*"))


def test_wallet_aside_renames_the_storage_dir_whole_and_keeps_revocations(host: Host) -> None:
    wallet_files(host)
    before = host.data.stat()
    answer = host.ok("wallet-aside")
    [aside] = asides(host)
    assert answer == f"moved {host.data} to {aside}"
    assert re.fullmatch(r"data-aside-\d{8}T\d{6}Z", aside.name)
    # Nothing deleted: every file is in the dated directory, as it was.
    assert (aside / "mnemonic").read_bytes() == b"sealed mnemonic of format 1"
    assert (aside / ".ldk" / "channel_manager").read_bytes() == b"channel state"
    assert (aside / "logs" / "log").read_text() == "a log line\n"
    # An empty storage dir owned and moded like the old one, revoked tokens still revoked.
    assert sorted(p.name for p in host.data.iterdir()) == ["revoked_tokens.txt"]
    assert (host.data / "revoked_tokens.txt").read_text() == "0a0b\n"
    after = host.data.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid, before.st_gid, before.st_mode,
    )  # fmt: skip
    assert not (host.root / "data.new").exists() and host.leftovers() == []


def test_wallet_aside_again_moves_nothing(host: Host) -> None:
    wallet_files(host)
    host.ok("wallet-aside")
    assert host.ok("wallet-aside") == f"no wallet in {host.data}: nothing moved"
    assert len(asides(host)) == 1


def test_wallet_aside_twice_in_a_second_never_reuses_a_directory(host: Host) -> None:
    wallet_files(host)
    host.ok("wallet-aside")
    (host.data / "mnemonic").write_bytes(b"a second wallet")
    host.ok("wallet-aside")
    contents = sorted((aside / "mnemonic").read_bytes() for aside in asides(host))
    assert contents == [b"a second wallet", b"sealed mnemonic of format 1"]


def test_wallet_aside_refuses_while_the_node_runs(host: Host) -> None:
    wallet_files(host)
    host.set_running(True)
    assert host.fails("wallet-aside") == "node is running: stop it before moving its wallet aside"
    assert (host.data / "mnemonic").is_file() and asides(host) == []


def test_wallet_aside_finishes_a_run_cut_short_between_its_renames(host: Host) -> None:
    wallet_files(host)
    (host.root / "data.new").mkdir()
    host.data.rename(host.root / "data-aside-20261202T050000Z")
    assert host.ok("wallet-aside") == f"no wallet in {host.data}: nothing moved"
    assert host.data.is_dir() and not (host.root / "data.new").exists()
    assert (host.root / "data-aside-20261202T050000Z" / "mnemonic").is_file()


# usage


FULL_USAGE = (
    "usage: rln-hostctl set-root-key HEX | set-network NETWORK | start | stop | status"
    " | install VERSION URL SHA256 | backup-upload PATH S3URI | backup-remove PATH"
    " | wallet-aside"
    " | backup-download URL PATH SHA256"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), FULL_USAGE),
        (("bogus",), FULL_USAGE),
        (("set-root-key",), "usage: rln-hostctl set-root-key HEX"),
        (("start", "now"), "usage: rln-hostctl start"),
        (("stop", "now"), "usage: rln-hostctl stop"),
        (("status", "-v"), "usage: rln-hostctl status"),
        (("install", "0.9.1"), "usage: rln-hostctl install VERSION URL SHA256"),
        (("backup-upload", "/x"), "usage: rln-hostctl backup-upload PATH S3URI"),
        (("backup-remove",), "usage: rln-hostctl backup-remove PATH"),
        (("backup-download", "u", "/x"), "usage: rln-hostctl backup-download URL PATH SHA256"),
        (("set-network",), "usage: rln-hostctl set-network NETWORK"),
        (("wallet-aside", "now"), "usage: rln-hostctl wallet-aside"),
    ],
)
def test_usage_errors_exit_2(host: Host, args: tuple[str, ...], message: str) -> None:
    assert host.fails(*args, code=2) == message


def test_help(host: Host) -> None:
    assert host.ok("--help") == FULL_USAGE


def test_an_unplanned_failure_is_still_one_line(host: Host) -> None:
    host.opt.rmdir()
    host.opt.write_text("a file where a directory belongs")
    message = host.fails("start")
    assert message.startswith("rln-hostctl: unexpected failure at line ")
    assert message.endswith(f"mkdir: cannot create directory '{host.opt}': File exists")
    assert host.leftovers() == []


def test_no_temporary_file_survives_any_command(host: Host, releases: ReleaseServer) -> None:
    release = releases.publish("0.9.1")
    host.ok("set-root-key", KEY)
    host.fails("install", "0.9.1", release.url, "0" * 64)
    host.ok(*release.args)
    host.ok("start")
    host.fails("install", "0.9.2", release.url, release.sha256)
    host.ok("stop")
    host.fails("bogus", code=2)
    assert host.leftovers() == []


# the recipe


def test_shellcheck_is_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (the project's setup script installs it)")
    scripts = [AGENT, HOST_DIR / "install-host.sh"]
    done = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


def test_agent_is_executable_with_a_bash_shebang() -> None:
    assert os.access(AGENT, os.X_OK)
    assert AGENT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -Eeuo pipefail" in AGENT.read_text()


def _render_cloud_init() -> str:
    spec = importlib.util.spec_from_file_location("render", HOST_DIR / "render_cloud_init.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: str = module.render()
    return rendered


def test_cloud_init_carries_the_current_files() -> None:
    text = (HOST_DIR / "cloud-init.yaml").read_text()
    assert text == _render_cloud_init(), "re-run: python deploy/host/render_cloud_init.py"
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    files = {entry["path"]: entry for entry in config["write_files"]}
    for name, mode in (("rln-hostctl", "0755"), ("rgb-lightning-node.service", "0644")):
        entry = files[f"/usr/local/lib/rln-host/{name}"]
        assert entry["content"] == (HOST_DIR / name).read_text()
        assert entry["permissions"] == mode
    installer = files["/usr/local/lib/rln-host/install-host.sh"]["content"]
    assert "/usr/local/bin/rln-hostctl" in installer
    assert "/etc/systemd/system/rgb-lightning-node.service" in installer
    assert any("install-host.sh" in " ".join(map(str, step)) for step in config["runcmd"])


def test_the_fleet_user_is_never_a_full_sudoer() -> None:
    config = yaml.safe_load((HOST_DIR / "cloud-init.yaml").read_text())
    image_cfg = yaml.safe_load((HOST_DIR / "90-rln-fleet.cfg").read_text())
    assert config["system_info"] == image_cfg["system_info"]
    user = config["system_info"]["default_user"]
    assert (user["name"], user["sudo"], user["groups"]) == ("fleet", False, [])
    installer = (HOST_DIR / "install-host.sh").read_text()
    assert 'rule="$FLEET_USER ALL=(root) NOPASSWD: /usr/local/bin/rln-hostctl"' in installer


def _unit_lines() -> list[str]:
    """The unit's directives, continuation lines joined."""
    text = (HOST_DIR / "rgb-lightning-node.service").read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line and line[0] != "#"]


def test_unit_runs_the_daemon_as_rln_with_the_root_key() -> None:
    lines = _unit_lines()
    assert (
        "ExecStart=/opt/rln/current/rgb-lightning-node /var/lib/rln"
        " --daemon-listening-port 3001 --ldk-peer-listening-port 9735"
        " --network ${NETWORK} --root-public-key ${ROOT_PUBLIC_KEY}"
    ) in lines
    for directive in (
        "User=rln",
        "EnvironmentFile=/etc/rln/node.env",
        "EnvironmentFile=/etc/rln/root-public-key",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/rln /var/lib/rln-backups",
    ):
        assert directive in lines
    assert not any("disable-authentication" in line for line in lines)


def test_unit_is_valid_for_systemd(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also wants the binary to exist; the unit's syntax is what is checked here.
    text = (HOST_DIR / "rgb-lightning-node.service").read_text()
    unit = tmp_path / "rgb-lightning-node.service"
    unit.write_text(text.replace("/opt/rln/current/rgb-lightning-node", "/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_packer_template_provisions_the_same_files() -> None:
    template = (HOST_DIR / "golden-image.pkr.hcl").read_text()
    assert 'source "amazon-ebs"' in template
    for name in PROVISIONED:
        assert f'"{name}"' in template
        assert (HOST_DIR / name).is_file()
    assert "install-host.sh /tmp/rln-host" in template
