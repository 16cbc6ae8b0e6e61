"""The fleet's benchmarks in one run: each figure beside its reference, measured in the
same run, then one table, the measured reasons behind it (CPU per step by part, time in
each state) and a JSON record; with --markdown, the same text as Markdown for the README.

    ./scripts/bench [--quick] [--only overhead latency makespan scale watch rollout] [--out PATH]
                    [--markdown PATH] [sizes]

Measurements (each module's docstring says exactly how):
  overhead  transitions/s through instant steps vs bare RQ no-op jobs (benchmarks.overhead)
  latency   row change -> handler start, LISTEN vs sweep only (benchmarks.latency)
  makespan  nodes new -> live through the simulated cloud vs the floor (benchmarks.makespan)
  scale     due-work query on a large fleet; one worker's memory (benchmarks.scale)
  watch     one `fleet watch` on N live nodes: CPU per probe, probes/s, detection
            latency after a reboot vs fresh SSH per call (benchmarks.watch)
  rollout   a release across N live nodes, batch P%, vs the sum of its batches'
            critical paths; most nodes down at once vs max-unavailable (benchmarks.rollout)

Every size has a full and a --quick default (the quick run takes about 9 minutes on
2 shared cores, the full one about 45, the watch alone 3 to 5 of them); a size given on
the command line wins over both."""

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import latency, makespan, overhead, rollout, scale, watch
from benchmarks.harness import Bench, bench_services
from benchmarks.report import (
    Measurement,
    load_average,
    machine,
    printed,
    record,
    write_json,
    write_markdown,
)
from worker.logs import configure_logging
from worker.settings import FleetSettings

DEFAULT_OUT = Path(".fleet/bench.json")


@dataclass(frozen=True)
class Size:
    full: float
    quick: float
    help: str


SIZES: dict[str, Size] = {
    "nodes": Size(2000, 400, "overhead: nodes through the 4-step chain"),
    "workers": Size(2, 2, "overhead, latency: worker processes"),
    "rounds": Size(3, 1, "overhead: interleaved rounds (the median is reported)"),
    "latency_rows": Size(500, 100, "latency: rows moved into a work state"),
    "latency_interval_ms": Size(50, 50, "latency: time between two rows' UPDATEs"),
    "makespan_nodes": Size(300, 30, "makespan: nodes new -> live"),
    "makespan_large_nodes": Size(1000, 0, "makespan: a second, larger fleet (0: none)"),
    "makespan_workers": Size(4, 4, "makespan: worker processes"),
    "makespan_batch": Size(100, 100, "makespan: FLEET_LAUNCH_BATCH_MAX of the batched run"),
    "makespan_reference": Size(1, 1, "makespan: 1 also runs one launch per call, 0 not"),
    "boot_seconds": Size(20, 20, "makespan: the simulated instance boot"),
    "scale_rows": Size(100_000, 20_000, "scale: node rows"),
    "due_share": Size(0.01, 0.01, "scale: share of the rows that is due"),
    "query_runs": Size(1000, 200, "scale: runs of the due-work query (and of the reference)"),
    "rss_steps": Size(10_000, 2_000, "scale: instant steps run by the measured worker"),
    "watch_nodes": Size(2000, 500, "watch: live nodes under one `fleet watch`"),
    "watch_interval": Size(30, 30, "watch: seconds between two probes of a node"),
    "watch_windows": Size(2, 1, "watch: steady-state intervals measured"),
    "watch_reboots": Size(50, 20, "watch: hosts rebooted (detection latency)"),
    "watch_reference_probes": Size(100, 50, "watch: probes of the reference (fresh SSH)"),
    "rollout_nodes": Size(300, 30, "rollout: live nodes rolled to a new release"),
    "rollout_batch_percent": Size(10, 10, "rollout: batch, percent of the nodes"),
    "rollout_workers": Size(4, 4, "rollout: worker processes"),
    "rollout_watch_interval": Size(2, 2, "rollout: seconds between two probes of a node"),
}
INTEGER_SIZES = {"nodes", "workers", "rounds", "latency_rows", "makespan_nodes",
                 "makespan_large_nodes", "makespan_batch", "makespan_reference",
                 "makespan_workers", "scale_rows", "query_runs", "rss_steps", "watch_nodes",
                 "watch_windows", "watch_reboots", "watch_reference_probes", "rollout_nodes",
                 "rollout_batch_percent", "rollout_workers"}  # fmt: skip


def _overhead(bench: Bench, s: dict[str, Any]) -> Measurement:
    sizes = overhead.OverheadSizes(s["nodes"], s["workers"], s["rounds"])
    return overhead.measure(bench, sizes)


def _latency(bench: Bench, s: dict[str, Any]) -> Measurement:
    sizes = latency.LatencySizes(s["latency_rows"], s["latency_interval_ms"], s["workers"])
    return latency.measure(bench, sizes)


def _makespan(bench: Bench, s: dict[str, Any]) -> list[Measurement]:
    fleets = [n for n in (s["makespan_nodes"], s["makespan_large_nodes"]) if n > 0]
    reference = bool(s["makespan_reference"])
    each = [makespan.MakespanSizes(n, s["makespan_workers"], s["boot_seconds"],
                                   s["makespan_batch"], reference) for n in fleets]  # fmt: skip
    return [makespan.measure(bench, sizes) for sizes in each]


def _scale(bench: Bench, s: dict[str, Any]) -> Measurement:
    sizes = scale.ScaleSizes(s["scale_rows"], s["due_share"], s["query_runs"], s["rss_steps"])
    return scale.measure(bench, sizes)


def _watch(bench: Bench, s: dict[str, Any]) -> Measurement:
    sizes = watch.WatchSizes(s["watch_nodes"], s["watch_interval"], s["watch_windows"],
                             s["watch_reboots"], s["watch_reference_probes"])  # fmt: skip
    return watch.measure(bench, sizes)


def _rollout(bench: Bench, s: dict[str, Any]) -> Measurement:
    sizes = rollout.RolloutSizes(s["rollout_nodes"], s["rollout_batch_percent"],
                                 s["rollout_workers"], s["rollout_watch_interval"],
                                 s["boot_seconds"])  # fmt: skip
    return rollout.measure(bench, sizes)


# A measurement may run at several sizes (makespan: 300 and 1,000 nodes), one Measurement each.
MEASUREMENTS: dict[str, Callable[[Bench, dict[str, Any]], Measurement | list[Measurement]]] = {
    "overhead": _overhead,
    "latency": _latency,
    "makespan": _makespan,
    "scale": _scale,
    "watch": _watch,
    "rollout": _rollout,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the smaller default sizes")
    parser.add_argument("--only", nargs="+", choices=list(MEASUREMENTS), default=list(MEASUREMENTS),
                        help="run only these measurements")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON record")
    parser.add_argument("--markdown", type=Path, help="also write the printed figures as Markdown")
    for name, size in SIZES.items():
        kind = int if name in INTEGER_SIZES else float
        help_text = f"{size.help} (full {size.full:g}, quick {size.quick:g})"
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)
    return parser.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for name, size in SIZES.items():
        given = getattr(args, name)
        default = size.quick if args.quick else size.full
        value = default if given is None else given
        chosen[name] = int(value) if name in INTEGER_SIZES else float(value)
    return chosen


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    args = parse(given)
    sizes = resolve_sizes(args)
    # The harness runs the dispatcher's code in-process: its events would land in the
    # printed table, which is the run's only output on stdout.
    configure_logging(FleetSettings(log_level="warning"))
    with bench_services() as bench:
        host = machine(bench)
        measurements = run_all(bench, args.only, sizes)
    host["load_average_at_end"] = load_average()
    options = {"quick": args.quick, "only": args.only, "sizes": sizes}
    found = record(measurements, host, options)
    write_json(args.out, found)
    print(f"\n{printed(found)}\n\nJSON: {args.out}")
    if args.markdown is not None:
        write_markdown(args.markdown, shlex.join(["./scripts/bench", *given]), found)
        print(f"Markdown: {args.markdown}")


def run_all(bench: Bench, names: list[str], sizes: dict[str, Any]) -> list[Measurement]:
    measurements: list[Measurement] = []
    for name in names:
        began = time.monotonic()
        print(f"bench: measuring {name} ...", file=sys.stderr, flush=True)
        found = MEASUREMENTS[name](bench, sizes)
        for measurement in found if isinstance(found, list) else [found]:
            measurement.details["seconds"] = round(time.monotonic() - began, 1)
            measurements.append(measurement)
        print(f"bench: {name} took {round(time.monotonic() - began, 1)} s", file=sys.stderr)
    return measurements


if __name__ == "__main__":
    main()
