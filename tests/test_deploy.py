"""deploy/: the Prometheus rules pass promtool and their unit tests, the Grafana dashboard's
queries parse, and every series the rules and the dashboard ask for is one a live daemon
exports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, REPO, SECRET, free_port, http, spawn, until, write_config

RULES = REPO / "deploy" / "prometheus" / "orderwatch.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "orderwatch.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "orderwatch.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("PROMTOOL_REQUIRED"),
    reason="promtool not installed (Debian: the prometheus package; .ci/run fetches it)",
)

# Series Prometheus makes itself for every target: in no exposition.
SYNTHETIC = frozenset({"up"})
# Labels Prometheus attaches to every series of a target, and the dashboard's variables select.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's variables, as Grafana would put them in before sending a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$job": ".*",
    "$instance": ".*",
}

# PromQL, coarsely: enough to tell metric names from everything else in an expression.
TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      | (?P<range>\[[^\]]*\])
      | (?P<variable>\$\{?\w+\}?)
      | (?P<number>\d[\w.]*)
      | (?P<name>[A-Za-z_:][\w:]*)
      | (?P<op>=~|!~|!=|==|<=|>=|\S)""",
    re.VERBOSE,
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Selector:
    """One vector selector: a metric name and its label matchers (label, op, value)."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()


def selectors(expr: str) -> list[Selector]:
    """The series an expression selects. Functions and aggregations (a name before `(`, or
    before `by`/`without`), keywords, label lists, durations, numbers and strings are skipped."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr)]
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and text in LABEL_LISTS and after == "(":
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")")
        elif kind == "name" and (after == "(" or after in ("by", "without")):
            pass
        elif kind == "name" and text.lower() not in KEYWORDS:
            matchers, i = _matchers(tokens, i + 1) if after == "{" else ((), i)
            found.append(Selector(text, matchers))
        elif text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        i += 1
    return found


def _matchers(
    tokens: list[tuple[str | None, str]], i: int
) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """Label matchers from the `{` at tokens[i]; returns them and the index of the `}`."""
    out = []
    i += 1
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        (_, label), (_, op), (_, quoted) = tokens[i : i + 3]
        out.append((label, op, quoted[1:-1]))
        i += 3
    return tuple(out), i


def test_selectors_finds_metrics_and_nothing_else() -> None:
    """The tokenizer keeps metric names with their matchers and drops functions, aggregations,
    label lists, keywords, durations, numbers, strings and Grafana variables."""
    expr = (
        'sum by (job) (rate(a_total{x="1", y=~"p|q"}[$__rate_interval])) / on (job)'
        ' group_left (z) b offset 5m > bool 0.95 and absent(c{job="j"})'
        " unless histogram_quantile(0.9, sum without (instance) (rate(d_bucket[5m])))"
        ' or label_replace(e, "dst", "$1", "src", "(.*)") or count(f == 0) or vector(0)'
    )
    assert selectors(expr) == [
        Selector("a_total", (("x", "=", "1"), ("y", "=~", "p|q"))),
        Selector("b"),
        Selector("c", (("job", "=", "j"),)),
        Selector("d_bucket"),
        Selector("e"),
        Selector("f"),
    ]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside a collapsed row


def dashboard_exprs() -> list[str]:
    """Every panel query, and the metric part of each `label_values(...)` variable query."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
            assert m is not None, var["query"]
            exprs.append(m.group(1))
    return exprs


def grafana_substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_every_rule_is_labelled_annotated_and_unit_tested() -> None:
    """Each alert has a severity, a summary, a description and a runbook hint, and the rule
    tests make each one fire at least once."""
    names = set()
    for rule in rules():
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert "orderwatch" in rule["annotations"]["runbook"], rule["alert"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == names


@needs_promtool
def test_rules_pass_promtool_check_and_unit_tests() -> None:
    """`promtool check rules` accepts the rules and `promtool test rules` passes."""
    assert PROMTOOL is not None, "PROMTOOL_REQUIRED is set but promtool is not on PATH"
    for command in ("check", "test"):
        target = RULES if command == "check" else RULE_TESTS
        r = subprocess.run(
            [PROMTOOL, command, "rules", target.name],
            cwd=target.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout, r.stdout


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL (promtool
    checks it as a recording rule)."""
    assert PROMTOOL is not None, "PROMTOOL_REQUIRED is set but promtool is not on PATH"
    records = [
        {"record": f"dashboard:query_{i}", "expr": grafana_substituted(e)}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    r = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(records)} rules found" in r.stdout, r.stdout


async def live_metrics(tmp_path: Path) -> str:
    """/metrics of a real `orderwatch run` process that has finished and delivered an order."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    receiver = Receiver(SECRET)
    log = tmp_path / "daemon.log"
    opts = SimOptions(api_key=API_KEY, complete_after=0.2)
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        cfg = write_config(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}"},
            webhooks=[{"url": url, "secret": SECRET}],
        )
        with log.open("wb") as out:
            proc = await spawn("run", "-c", str(cfg), stdout=out, stderr=out)
        try:

            async def ready() -> bool:
                assert proc.returncode is None, log.read_text()
                try:
                    return (await http("GET", f"{base}/readyz"))[0] == 200
                except aiohttp.ClientConnectionError:
                    return False  # not listening yet

            await until(ready)
            status, text = await http("POST", f"{base}/orders", json={"ids": ["O-DEPLOY1"]})
            assert status == 200, text

            async def delivered() -> bool:
                return len(receiver.events) == 1

            await until(delivered, receiver.changed)
            status, metrics = await http("GET", f"{base}/metrics")
            assert status == 200, metrics
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0, log.read_text()
    return metrics


async def test_rules_and_dashboard_use_only_exported_series(tmp_path: Path) -> None:
    """Every metric in every rule expression and dashboard query is in a live daemon's
    /metrics (histograms with _bucket, _sum and _count), and every label value they match
    on exists there."""
    text = await live_metrics(tmp_path)
    samples: dict[str, list[dict[str, str]]] = {}
    histograms = set()
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            histograms.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append(s.labels)
    assert {"state": "final"} in samples["orderwatch_orders"]
    assert samples["orderwatch_delivery_latency_seconds_count"] == [{}]
    assert "orderwatch_rate_limit_requests_per_second 200.0" in text
    # Push is off and one order starts no sweep, yet their series are there with every outcome
    # at 0 from the start: the check below covers the push and sweep rules and panels too.
    assert {"outcome": "bad_signature"} in samples["orderwatch_pushes_total"]
    assert {"outcome": "refused"} in samples["orderwatch_sweeps_total"]
    assert {"endpoint": "list", "outcome": "listed"} in samples["orderwatch_api_requests_total"]

    exprs = [r["expr"] for r in rules()] + [grafana_substituted(e) for e in dashboard_exprs()]
    problems = []
    for expr in exprs:
        found = selectors(expr)
        assert found, expr
        for sel in found:
            problems += missing(sel, samples, histograms)
    assert problems == []


def missing(
    sel: Selector, samples: dict[str, list[dict[str, str]]], histograms: set[str]
) -> list[str]:
    """What `sel` asks for that the exposition lacks."""
    if sel.metric in SYNTHETIC:
        return []
    if sel.metric not in samples:
        return [f"{sel.metric}: not exported"]
    problems = []
    for suffix in HISTOGRAM_SUFFIXES:
        base = sel.metric.removesuffix(suffix)
        if base != sel.metric and base in histograms:
            problems += [
                f"{base}{s}: not exported" for s in HISTOGRAM_SUFFIXES if base + s not in samples
            ]
    for label, op, value in sel.matchers:
        if label in TARGET_LABELS or op in ("!=", "!~"):
            continue
        have = {labels.get(label) for labels in samples[sel.metric]}
        wanted = [value] if op == "=" else value.split("|")
        problems += [
            f"{sel.metric}{{{label}{op}{value!r}}}: no series with {label}={w!r}"
            for w in wanted
            if not any(h is not None and re.fullmatch(w, h) for h in have)
        ]
    return problems
