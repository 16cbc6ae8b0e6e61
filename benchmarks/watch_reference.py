"""The watch benchmark's reference, in a process of its own so that its CPU is its own:
the same probe (GET /nodeinfo, then /networkinfo) done the way the workers reach a node,
through jobs.node_api over jobs.tunnel (a fresh paramiko SSH session per API call, the
pinned key checked each time). What that costs beside the watch's probe on a kept
asyncssh connection is what keeping the connections buys.

    python -m benchmarks.watch_reference < targets.json   (prints one JSON line)

The input is {"targets": [[address, pinned_key, root_private_hex], ...]}; the fleet's
settings (SSH key, ports) come from the FLEET_ environment as for any fleet process."""

import json
import resource
import sys
import time
from typing import Any

from jobs.node_api import NodeApi
from jobs.node_auth import route_token
from jobs.tunnel import SshTunnel
from worker.settings import FleetSettings

TIMEOUT_SECONDS = 10.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probe(settings: FleetSettings, address: str, pinned: str, root_hex: str) -> None:
    api = NodeApi(
        SshTunnel(settings, address, pinned),
        lambda path: route_token(root_hex, path),
        TIMEOUT_SECONDS,
        TIMEOUT_SECONDS,
    )
    api.node_info()
    api.network_info()


def run(targets: list[list[str]]) -> dict[str, Any]:
    settings = FleetSettings()
    # One probe first, outside the count: imports and paramiko's first use are start-up.
    probe(settings, *targets[0])
    began_cpu, began = cpu_seconds(), time.monotonic()
    for address, pinned, root_hex in targets:
        probe(settings, address, pinned, root_hex)
    cpu, wall = cpu_seconds() - began_cpu, time.monotonic() - began
    return {"probes": len(targets), "cpu_seconds": cpu, "wall_seconds": wall}


def main() -> None:
    targets = json.load(sys.stdin)["targets"]
    print(json.dumps(run(targets)))


if __name__ == "__main__":
    main()
