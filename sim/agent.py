"""The host agent's commands, as the simulated SSH server calls them. The real agent is
deploy/host/rln-hostctl; both take the same command lines and answer the same way:
one line on stdout and exit 0, or one line on stderr and exit 1."""

from typing import Protocol


class AgentError(Exception):
    """The command failed; its message is the one line the agent prints on stderr."""


class HostAgent(Protocol):
    async def set_root_key(self, public_key_hex: str) -> str: ...

    async def start(self) -> str: ...

    async def stop(self) -> str: ...

    async def set_network(self, network: str) -> str: ...

    async def status(self) -> str: ...

    async def install(self, version: str, url: str, sha256: str) -> str: ...

    async def backup_upload(self, path: str, s3_uri: str) -> str: ...

    async def backup_remove(self, path: str) -> str: ...
