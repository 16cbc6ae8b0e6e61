"""deploy/monitoring/: the alerting rules and the scrape config pass promtool's checks, the
rules' unit tests (alerts_test.yml) pass and cover every alert both firing and silent, and
the rules and the Grafana dashboard query only metrics and labels the code registers."""

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana-fleet.json"
RUNBOOK = MONITORING / "README.md"


@dataclass(frozen=True)
class Metric:
    kind: str  # counter, gauge, histogram or summary: what prometheus-client calls it
    labels: tuple[str, ...]


# What Prometheus itself adds: `up` per target, and these labels on every series.
BUILTIN = {"up": Metric("gauge", ())}
TARGET_LABELS = ("job", "instance")
METRIC_CLASSES = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
                  "Summary": "summary"}  # fmt: skip
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
NOT_SOURCE = {".venv", "tests", "build", "node_modules"}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("no promtool here: ./scripts/setup installs it (Debian's prometheus)")
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path.name} is not a mapping"
    return loaded


@cache
def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


@cache
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


# --- promtool -----------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_config_and_the_rules_it_loads() -> None:
    done = promtool("check", "config", CONFIG.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    done = promtool("test", "rules", ALERTS_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_is_silent() -> None:
    cases = [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]
    for rule in rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never silent"


# --- what an operator reads -----------------------------------------------------------


def test_every_alert_says_how_bad_what_and_where_the_runbook_is() -> None:
    headings = {
        line.removeprefix("### ").strip()
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert notes["runbook"] == f"deploy/monitoring/README.md#{name.lower()}", name
        assert name in headings, f"{name} has no '### {name}' section in {RUNBOOK.name}"
    assert headings >= {rule["alert"] for rule in rules()}


def test_the_jobs_queried_are_the_jobs_scraped() -> None:
    scraped = {job["job_name"] for job in load_yaml(CONFIG)["scrape_configs"]}
    assert scraped == {"fleet-dispatcher", "fleet-worker", "fleet-watch", "fleet-api"}
    for expr in queries():
        for job in re.findall(r'job=~?"([^"]*)"', expr):
            assert any(re.fullmatch(job, name) for name in scraped), (job, expr)


# --- the metrics queried exist --------------------------------------------------------


def source_files() -> Iterator[Path]:
    for top in sorted(REPO.iterdir()):
        if top.name.startswith(".") or top.name in NOT_SOURCE:
            continue
        yield from [top] if top.suffix == ".py" else sorted(top.rglob("*.py"))


def declared(path: Path) -> Iterator[tuple[str, Metric]]:
    """Counter("name", "help", ["label", ...]) and the like, as prometheus-client reads them."""
    for call in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(call, ast.Call) or not call.args:
            continue
        func = call.func
        cls = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        name = call.args[0]
        if cls not in METRIC_CLASSES or not isinstance(name, ast.Constant):
            continue
        labels = call.args[2] if len(call.args) > 2 else None
        for keyword in call.keywords:
            labels = keyword.value if keyword.arg == "labelnames" else labels
        names = ast.literal_eval(labels) if labels is not None else ()
        yield str(name.value), Metric(METRIC_CLASSES[cls], tuple(names))


@cache
def registered() -> dict[str, Metric]:
    return {name: metric for path in source_files() for name, metric in declared(path)}


def exposed(declared_metrics: dict[str, Metric]) -> dict[str, tuple[str, ...]]:
    """Series name -> its labels, as /metrics shows them (a counter's name gains _total)."""
    series: dict[str, tuple[str, ...]] = {}
    for name, metric in declared_metrics.items():
        base = name.removesuffix("_total") if metric.kind == "counter" else name
        extra = ("le",) if metric.kind == "histogram" else ()
        for suffix in SUFFIXES[metric.kind]:
            bucket = suffix == "_bucket"
            series[base + suffix] = (*metric.labels, *TARGET_LABELS, *(extra if bucket else ()))
    return series


KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
SELECTOR = r"(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?"


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """The metric names of a PromQL expression, each with the label names it matches on."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings could hold anything
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges: [5m], [$__rate_interval]
    text = re.sub(GROUPING, "", text)
    for match in re.finditer(SELECTOR, text):
        name, matchers, call = match.groups()
        if call or name in KEYWORDS:
            continue
        yield name, set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))


def template_queries(text: str) -> list[str]:
    return [q.replace('\\"', '"') for q in re.findall(r'query "((?:[^"\\]|\\.)*)"', text)]


def queries() -> list[str]:
    """Every PromQL expression of the rules (their annotations' too) and of the dashboard."""
    found = []
    for rule in rules():
        found.append(rule["expr"])
        for note in rule["annotations"].values():
            found.extend(template_queries(note))
    return found + [expr for _, expr in dashboard_queries()]


def test_the_metric_declarations_are_found() -> None:
    metrics = registered()
    assert metrics["fleet_nodes_held"] == Metric("gauge", ("state",))
    assert metrics["fleet_step_outcomes_total"] == Metric("counter", ("state", "result"))
    assert metrics["fleet_api_requests"] == Metric("counter", ("method", "route", "status"))
    assert metrics["fleet_dispatch_latency_seconds"].kind == "histogram"
    parsed = dict(selectors('max by (x) (rate(fleet_a_total{state=~"l.*"}[5m])) > bool 1e3'))
    assert parsed == {"fleet_a_total": {"state"}}


def test_every_metric_and_label_queried_is_one_the_code_registers() -> None:
    known = exposed({**registered(), **BUILTIN})
    for expr in queries():
        for name, labels in selectors(expr):
            assert name in known, f"{name} is registered nowhere (in {expr})"
            unknown = labels - set(known[name])
            assert not unknown, f"{name} has no label {sorted(unknown)} (in {expr})"


# --- the dashboard ----------------------------------------------------------------------

GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (f"panel_{panel['id']}_{target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_has_a_grafana_dashboards_shape() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in board["panels"]:
        assert panel["type"] in ("row", "stat", "timeseries"), panel["type"]
        assert panel["title"], panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == DATASOURCE


def test_the_dashboards_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        x, y, w, h = (grid[key] for key in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= GRID_WIDTH, panel["title"]
        cells = {(col, row) for col in range(x, x + w) for row in range(y, y + h)}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    shown = {name for _, expr in dashboard_queries() for name, _ in selectors(expr)}
    assert shown >= {
        "fleet_nodes", "fleet_nodes_held", "fleet_nodes_due",
        "fleet_dispatch_latency_seconds_bucket", "fleet_step_outcomes_total",
        "fleet_live_nodes_by_health", "fleet_watch_probes_total", "fleet_watch_heals_total",
        "fleet_launches_paused",
    }  # fmt: skip


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana's own validator is not here: the queries go through Prometheus's parser
    as recording rules, with Grafana's $__rate_interval as a plain range."""
    recorded = [
        {"record": f"dashboard:{name}", "expr": expr.replace("$__rate_interval", "5m")}
        for name, expr in dashboard_queries()
    ]
    file = tmp_path / "dashboard-queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    done = promtool("check", "rules", file.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
