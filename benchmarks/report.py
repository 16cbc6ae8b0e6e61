"""Figures, their targets and verdicts, the printed table and the JSON record."""

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import redis

from benchmarks.harness import Bench, scalar

Verdict = Literal["met", "NOT MET", "info"]


@dataclass(frozen=True)
class Target:
    """value <= limit (at_most) or value >= limit; on_ratio compares value / reference."""

    limit: float
    at_most: bool
    on_ratio: bool = False

    def met(self, value: float, reference: float | None) -> bool:
        if self.on_ratio:
            if not reference:
                return False
            value = value / reference
        return value <= self.limit if self.at_most else value >= self.limit

    def describe(self, unit: str) -> str:
        sign = "<=" if self.at_most else ">="
        return f"{sign} {self.limit:g}x ref" if self.on_ratio else f"{sign} {self.limit:g} {unit}"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    reference: float | None = None
    reference_label: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.reference if self.reference else None

    @property
    def verdict(self) -> Verdict:
        if self.target is None:
            return "info"
        return "met" if self.target.met(self.value, self.reference) else "NOT MET"

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "ratio": self.ratio,
            "target": self.target.describe(self.unit) if self.target else None,
            "verdict": self.verdict,
        }


@dataclass
class Measurement:
    """What one measurement reports: table rows and everything else it saw (JSON)."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


COLUMNS = ("figure", "value", "reference", "ratio", "target", "verdict")


def _number(value: float, unit: str) -> str:
    text = (
        f"{value:.3g}"
        if abs(value) < 10
        else f"{value:,.0f}"
        if abs(value) >= 1000
        else f"{value:.1f}"
    )
    return f"{text} {unit}".strip()


def _row(figure: dict[str, Any]) -> tuple[str, ...]:
    """One table row from a figure as the JSON record holds it."""
    unit = figure["unit"]
    reference = "" if figure["reference"] is None else _number(figure["reference"], unit)
    if figure["reference_label"]:
        label = figure["reference_label"]
        reference = f"{reference} ({label})" if reference else label
    ratio = "" if figure["ratio"] is None else f"{figure['ratio']:.2f}"
    target = figure["target"] or ""
    return (figure["name"], _number(figure["value"], unit), reference, ratio, target,
            figure["verdict"])  # fmt: skip


def table(figures: list[dict[str, Any]]) -> str:
    rows = [COLUMNS] + [_row(f) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def where_it_went(details: dict[str, Any]) -> list[str]:
    """The measured reasons behind the figures: CPU per step by part (overhead) and the
    time the nodes spent in each state (makespan), when those ran."""
    lines: list[str] = []
    overhead = details.get("overhead", {})
    sides = (("whole fleet", "fleet_cpu_ms_per_step"),
             ("workers only", "workers_only_cpu_ms_per_step"),
             ("bare RQ", "rq_cpu_ms_per_job"))  # fmt: skip
    found = [(label, overhead[key]) for label, key in sides if key in overhead]
    if found:
        lines.append("CPU ms per step (overhead runs, median of rounds):")
        for label, parts in found:
            shares = ", ".join(f"{part} {ms:.2f}" for part, ms in sorted(parts.items()))
            lines.append(f"  {label:<13} {shares}")
    query = details.get("scale", {}).get("due_query")
    if query:
        server = ", ".join(f"{ms:g}" for ms in query["server_execution_ms"])
        plan = " > ".join(query["plan_nodes"])
        lines.append(f"due query: plan {plan} ({', '.join(query['indexes'])});"
                     f" server execution {server} ms (EXPLAIN ANALYZE)")  # fmt: skip
    lines += _watch_lines(details.get("watch", {}))
    for name, measured in sorted(details.items()):
        if name.startswith("makespan"):
            lines += _makespan_lines(name, measured)
    return lines


def _makespan_lines(name: str, makespan: dict[str, Any]) -> list[str]:
    """Per run of a makespan: where its nodes waited, and what RunInstances it made."""
    lines = []
    for label, run in makespan.get("runs", {}).items():
        stays = ", ".join(f"{state} {s['p50']:g}/{s['max']:g}"
                          for state, s in run["seconds_in_state"].items())  # fmt: skip
        calls = ", ".join(f"{k} {v}" for k, v in sorted(run["run_instances_calls"].items()))
        lines.append(f"{name} {label}: seconds in state (p50/max) {stays}; RunInstances {calls}")
    return lines


def _watch_lines(watch: dict[str, Any]) -> list[str]:
    """Where the watch run's CPU went: the watch, the simulator beside it, the reference."""
    steady, reference = watch.get("steady"), watch.get("reference")
    if not steady or not reference or "simulator_share_of_a_core" not in steady:
        return []
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(watch["statuses_after_steady"].items()))
    return [
        f"watch steady state: watch {steady['cpu_share_of_a_core']:.2f} of a core"
        f" ({steady['cpu_ms_per_probe']:.2f} ms/probe), simulator and harness"
        f" {steady['simulator_share_of_a_core']:.2f} ({steady['simulator_cpu_ms_per_probe']:.2f}"
        f" ms/probe); last statuses: {statuses}",
        f"watch reference: {reference['probes']} probes, {reference['cpu_ms_per_probe']:.2f} ms"
        f" CPU and {reference['wall_ms_per_probe']:.1f} ms wall each (2 SSH sessions per probe)",
    ]


def machine(bench: Bench) -> dict[str, Any]:
    """What the figures ran on, so that they can be compared with another run."""
    broker = redis.Redis.from_url(bench.services.redis_url)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_mem_total_kib() / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": scalar(bench.services.postgres_url, "SHOW server_version"),
        "redis": broker.info("server").get("redis_version"),
        "rq": version("rq"),
        "services": "given" if os.environ.get("FLEET_TEST_DATABASE_URL") else "started by the run",
        # The machine is shared: what else ran says how far to trust the absolute figures
        # (the ratios hold either way, each side having run under the same load).
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_line(host: dict[str, Any]) -> str:
    start, end = (host.get(f"load_average_at_{moment}", ["?"])[0] for moment in ("start", "end"))
    return (
        f"{host['cpus']} CPUs ({host['cpu_model']}), {host['memory_gib']} GiB; "
        f"Postgres {host['postgres']}, Redis {host['redis']}, RQ {host['rq']}; "
        f"load average {start} at start, {end} at end"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def _mem_total_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def record(
    measurements: list[Measurement], host: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """Everything a run found: what is printed and written is rendered from this alone."""
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "options": options,
        "figures": [f.as_json() | {"measurement": m.name} for m in measurements for f in m.figures],
        "details": {m.name: m.details for m in measurements},
    }


def printed(found: dict[str, Any]) -> str:
    """The machine, the table and the reasons, as `scripts/bench` prints them."""
    return "\n".join(
        [machine_line(found["machine"]), table(found["figures"]), "",
         *where_it_went(found["details"])]
    ).rstrip()  # fmt: skip


def write_json(path: Path, found: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2, default=str) + "\n")


def write_markdown(path: Path, command: str, found: dict[str, Any]) -> None:
    """The command, what it printed (verbatim) and the verdicts, for the README."""
    verdicts = [
        f"- {f['name']}: **{f['verdict']}**" for f in found["figures"] if f["target"] is not None
    ]
    text = "\n".join(
        [f"Printed by `{command}` (finished {found['finished_at']}):", "", "```",
         printed(found), "```", "", *verdicts, ""]
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    """Render a run's JSON record again (e.g. after the renderer learned to show more)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("record", type=Path, help="the JSON that scripts/bench wrote")
    parser.add_argument("--command", default="./scripts/bench", help="the command that ran")
    parser.add_argument("--markdown", type=Path, help="write the Markdown here too")
    args = parser.parse_args()
    found = json.loads(args.record.read_text())
    print(printed(found))
    if args.markdown is not None:
        write_markdown(args.markdown, args.command, found)


if __name__ == "__main__":
    main()
