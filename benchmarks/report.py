"""Figures, their targets and verdicts, the printed table and the JSON record."""

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


def _row(figure: Figure) -> tuple[str, ...]:
    reference = "" if figure.reference is None else _number(figure.reference, figure.unit)
    if figure.reference_label:
        reference = (
            f"{reference} ({figure.reference_label})" if reference else figure.reference_label
        )
    ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}"
    target = figure.target.describe(figure.unit) if figure.target else ""
    return (
        figure.name,
        _number(figure.value, figure.unit),
        reference,
        ratio,
        target,
        figure.verdict,
    )


def table(measurements: list[Measurement]) -> str:
    rows = [COLUMNS] + [_row(f) for m in measurements for f in m.figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


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
    }


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


def write_json(
    path: Path, measurements: list[Measurement], host: dict[str, Any], options: dict[str, Any]
) -> None:
    record = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "options": options,
        "figures": [f.as_json() | {"measurement": m.name} for m in measurements for f in m.figures],
        "details": {m.name: m.details for m in measurements},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
