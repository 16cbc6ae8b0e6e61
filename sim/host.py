"""One simulated node host: the host agent's commands (sim/agent.py) acting on a
simulated RLN daemon (sim/rln_daemon.py), reachable over SSH (sim/ssh_server.py), whose
direct-tcpip channels to 127.0.0.1 / localhost at the API port reach the daemon, and
over plain HTTP on the host's own loopback address. The daemon counts which way each
call came (`traffic`)."""

import asyncio
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncssh

from sim.agent import AgentError
from sim.rln_daemon import (
    FIRST_WALLET_FORMAT,
    NETWORKS,
    STORAGE_DIR,
    ApiFaults,
    ApiTraffic,
    ChainWorld,
    NodeDisk,
    RlnDaemon,
)
from sim.ssh_server import SimSSHHost, start_ssh_server

HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
# Fetches a release artifact (s3://... from the simulated S3) and returns its bytes.
Fetch = Callable[[str], bytes]
# Uploads a backup file to the simulated S3: URI, content, its SHA-256 (object metadata).
Upload = Callable[[str, bytes, str], None]
# Where /backup files go: beside the storage dir, never inside it (deploy/host/README.md).
BACKUP_DIR = "/var/lib/rln-backups"
# A simulated release artifact says which wallet format its daemon reads and writes
# (upstream's release of 2026-08-01 changed it); one that does not is of the first.
ARTIFACT_WALLET_FORMAT = re.compile(rb"wallet-format=([0-9]{1,4})")


def artifact_wallet_format(artifact: bytes) -> int:
    found = ARTIFACT_WALLET_FORMAT.search(artifact)
    return int(found.group(1)) if found else FIRST_WALLET_FORMAT


@dataclass
class HostFaults:
    agent_failure_rate: float = 0.0
    # A release download that stalls this long (a dead mirror, a black-holed route).
    download_stall_seconds: float = 0.0
    # An image whose unit ignores /etc/rln/node.env (built before the agent set the
    # network): its daemon runs the image's network whatever set-network wrote.
    image_network_fixed: bool = False
    # Uploads that lose their second half on the way, unnoticed by the agent (which
    # still reports the whole file's size and checksum): what S3 verification catches.
    truncated_uploads: bool = False
    # A daemon that exits right after it is started (a bad flag, a port taken): the real
    # agent sees it when it looks again after its settle time, and says the last log line.
    exits_at_once: str | None = None
    api: ApiFaults = field(default_factory=ApiFaults)
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class HostPorts:
    ssh: int
    api: int


class SimHost:
    def __init__(
        self,
        address: str,
        ports: HostPorts,
        network: str,
        version: str | None,
        client_key: asyncssh.SSHKey,
        fetch: Fetch,
        upload: Upload,
        unlock_seconds: float = 0.2,
        faults: HostFaults | None = None,
        chain: ChainWorld | None = None,
        disk_root: Path | None = None,
        wallet_format: int = FIRST_WALLET_FORMAT,
    ) -> None:
        self.address = address
        self.ports = ports
        self.image_network = network  # what the image wrote to /etc/rln/node.env
        self.network = network  # /etc/rln/node.env now
        self.version = version
        self.wallet_format = wallet_format  # of the installed release's daemon
        self.disk = NodeDisk(root=disk_root)
        self.chain = chain or ChainWorld.local()
        self.traffic = ApiTraffic()  # every daemon run's calls, tunnelled or direct
        self.root_key: str | None = None
        self.daemon: RlnDaemon | None = None
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.faults = faults or HostFaults()
        self._client_key = client_key
        self._fetch = fetch
        self._upload = upload
        self._unlock_seconds = unlock_seconds
        self._ssh: SimSSHHost | None = None
        self.commands: list[str] = []
        self._handshakes_before_boot = 0  # of the SSH servers of earlier boots

    @property
    def ssh_server(self) -> SimSSHHost | None:
        """The SSH server of this boot (None while the host is off)."""
        return self._ssh

    # --- the machine -------------------------------------------------------------
    async def boot(self) -> None:
        self._ssh = await start_ssh_server(
            self.address,
            self.ports.ssh,
            self,
            self.host_key,
            self._client_key,
            forward_ports=[self.ports.api],
        )

    async def power_off(self) -> None:
        """The host dies: SSH and the node API stop answering. The disk survives."""
        await self._stop_daemon()
        if self._ssh is not None:
            await self._ssh.close()
            self._handshakes_before_boot += self._ssh.handshakes
            self._ssh = None

    async def reboot(self) -> None:
        """The host restarts; the node service comes back (systemd) but locked. systemd
        is not the host agent: the agent's injected failures never touch it."""
        was_running = self.daemon is not None
        await self.power_off()
        await self.boot()
        if was_running:
            await self._run_daemon()

    async def crash(self) -> None:
        """The daemon dies and stays down (an OOM kill systemd gave up restarting, a
        crash loop): SSH still answers, the agent says stopped, the API port is closed."""
        await self._stop_daemon()

    def replace_wallet(self, mnemonic: str) -> None:
        """Another node's wallet on this host (a swapped disk, a hijacked host): the running
        daemon answers with that node's pubkey from now on."""
        self.disk.mnemonic = mnemonic

    @property
    def ssh_handshakes(self) -> int:
        """SSH connections clients opened to this host, over all its boots."""
        now = 0 if self._ssh is None else self._ssh.handshakes
        return self._handshakes_before_boot + now

    @property
    def open_ssh_connections(self) -> int:
        """SSH connections open to this host now."""
        return 0 if self._ssh is None else len(self._ssh.connections)

    async def drop_ssh_connections(self) -> None:
        """Fault knob: the open SSH connections break; the host keeps serving new ones."""
        if self._ssh is not None:
            self._ssh.drop_connections()

    async def change_host_key(self) -> None:
        """The host shows another SSH key from now on (rebuilt, or a man in the middle)."""
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        if self._ssh is not None:
            self._ssh.change_host_key(self.host_key)

    # --- the host agent ------------------------------------------------------------
    async def set_root_key(self, public_key_hex: str) -> str:
        self._maybe_fail("set-root-key")
        if not HEX_KEY.match(public_key_hex):
            raise AgentError("invalid root public key: need 64 lowercase hex characters")
        if public_key_hex == self.root_key:
            return "unchanged"
        self.root_key = public_key_hex
        return "set"

    async def start(self) -> str:
        self._maybe_fail("start")
        if self.daemon is not None:
            return "already running"
        await self._run_daemon()
        return "started"

    async def _run_daemon(self) -> None:
        if self.root_key is None:
            raise AgentError("no root public key set: run set-root-key first")
        if self.version is None:
            raise AgentError("no release installed: run install first")
        if self.faults.exits_at_once is not None:
            raise AgentError(
                f"rgb-lightning-node did not stay up after start: {self.faults.exits_at_once}"
            )
        network = self.image_network if self.faults.image_network_fixed else self.network
        daemon = RlnDaemon(
            self.disk,
            network,
            self.root_key,
            unlock_seconds=self._unlock_seconds,
            faults=self.faults.api,
            traffic=self.traffic,
            chain=self.chain,
            wallet_format=self.wallet_format,
        )
        await daemon.start(self.address, self.ports.api)
        self.daemon = daemon

    async def stop(self) -> str:
        self._maybe_fail("stop")
        if self.daemon is None:
            return "already stopped"
        await self._stop_daemon()
        return "stopped"

    async def set_network(self, network: str) -> str:
        self._maybe_fail("set-network")
        if network not in NETWORKS:
            raise AgentError(f"invalid network: {network} (one of {' | '.join(NETWORKS)})")
        if network == self.network:
            return "unchanged"
        if self.daemon is not None:
            raise AgentError(
                f"node is running on {self.network}: stop it before changing its network"
            )
        self.network = network
        return "set"

    async def status(self) -> str:
        state = "running" if self.daemon is not None else "stopped"
        version = self.version or "none"
        return f"state={state} version={version} root_key={self.root_key or 'none'}"

    async def install(self, version: str, url: str, sha256: str) -> str:
        self._maybe_fail("install")
        if self.daemon is not None:
            raise AgentError(f"node is running: stop it before installing {version}")
        if version == self.version:
            return "already installed"
        await asyncio.sleep(self.faults.download_stall_seconds)
        try:
            artifact = await asyncio.to_thread(self._fetch, url)
        except Exception as exc:  # noqa: BLE001  # any failed download is the agent's error
            raise AgentError(f"download of {url} failed: {type(exc).__name__}") from None
        got = hashlib.sha256(artifact).hexdigest()
        if got != sha256:
            raise AgentError(f"checksum mismatch for {version}: expected {sha256}, got {got}")
        self.version = version
        self.wallet_format = artifact_wallet_format(artifact)
        return f"installed {version}"

    async def wallet_aside(self) -> str:
        """Move the storage dir aside to a dated directory beside it, never deleting
        (the real agent's contract, deploy/host/rln-hostctl)."""
        self._maybe_fail("wallet-aside")
        if self.daemon is not None:
            raise AgentError("node is running: stop it before moving its wallet aside")
        if self.disk.read(f"{STORAGE_DIR}/mnemonic") is None:
            return f"no wallet in {STORAGE_DIR}: nothing moved"
        base = f"{STORAGE_DIR}-aside-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        aside, number = base, 1
        while self.disk.path(aside).exists():
            number += 1
            aside = f"{base}-{number}"
        self.disk.move_aside(aside)
        return f"moved {STORAGE_DIR} to {aside}"

    async def backup_upload(self, path: str, s3_uri: str) -> str:
        self._maybe_fail("backup-upload")
        file = self._backup_file(path)
        if not file.is_file():
            raise AgentError(f"no such backup file: {path}")
        content = file.read_bytes()
        sha256 = hashlib.sha256(content).hexdigest()
        sent = content[: len(content) // 2] if self.faults.truncated_uploads else content
        await asyncio.to_thread(self._upload, s3_uri, sent, sha256)
        return f"{s3_uri} size={len(content)} sha256={sha256}"

    async def backup_remove(self, path: str) -> str:
        self._maybe_fail("backup-remove")
        file = self._backup_file(path)
        if not file.exists():
            return "already removed"
        file.unlink()
        return "removed"

    async def backup_download(self, url: str, path: str, sha256: str) -> str:
        """A backup onto the host from a presigned link (to restore a replaced node's
        wallet), kept only if its SHA-256 is the one the fleet recorded when it verified
        the upload. The link is never repeated in an answer: it is a credential."""
        self._maybe_fail("backup-download")
        file = self._backup_file(path)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise AgentError("invalid SHA256: need 64 hex characters")
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != sha256:
            try:
                content = await asyncio.to_thread(self._fetch, url)
            except Exception as exc:  # noqa: BLE001  # any failed download is the agent's error
                raise AgentError(f"download of the backup failed: {type(exc).__name__}") from None
            got = hashlib.sha256(content).hexdigest()
            if got != sha256:
                raise AgentError(f"checksum mismatch for {path}: expected {sha256}, got {got}")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(content)
        return f"{path} size={file.stat().st_size} sha256={sha256}"

    def backup_files(self) -> list[Path]:
        """What lies in the host's backup directory."""
        folder = self.disk.path(BACKUP_DIR)
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def _backup_file(self, path: str) -> Path:
        try:
            file = self.disk.path(path)
        except ValueError:
            file = None
        if file is None or file.parent != self.disk.path(BACKUP_DIR):
            raise AgentError(f"refusing {path}: not a file in {BACKUP_DIR}")
        return file

    def _maybe_fail(self, command: str) -> None:
        self.commands.append(command)
        if self.faults.rng.random() < self.faults.agent_failure_rate:
            raise AgentError(f"{command}: simulated failure")

    async def _stop_daemon(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
            self.daemon = None
