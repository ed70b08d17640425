"""Record what real exporters serve, and test alert rules on the recording with ``promtool``.

A ``Recorder`` scrapes each exporter every ``interval_s`` (as Prometheus would, adding ``job``,
``instance`` and ``up``). ``promtool_test`` turns the recording into promtool's input series,
one recorded scrape per replayed 15 s, and checks which alerts fire with which labels when.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
REPLAY_INTERVAL_S = 15.0
"""Each recorded scrape stands for one Prometheus scrape at its default interval."""


def scrape(url: str, timeout: float = 3.0) -> dict[tuple[str, Labels], float]:
    """One scrape: (metric, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    served = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names every counter sample ..._total; keep the name as served.
            name = sample.name if sample.name in served else family.name
            values[(name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return values


@dataclass
class Target:
    job: str
    url: str

    @property
    def instance(self) -> str:
        return self.url.split("/")[2]


@dataclass
class Recording:
    interval_s: float
    scrapes: list[dict[tuple[str, Labels], float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def series(self, prefixes: Iterable[str]) -> dict[tuple[str, Labels], list[float | None]]:
        """Every recorded series whose name starts with one of ``prefixes``, value per scrape."""
        keys = sorted({k for s in self.scrapes for k in s if k[0].startswith(tuple(prefixes))})
        return {k: [s.get(k) for s in self.scrapes] for k in keys}

    def last(self, name: str, **labels: str) -> list[float]:
        """The values of ``name`` matching ``labels`` in the last scrape."""
        return self.values_at(-1, name, **labels)

    def values_at(self, index: int, name: str, **labels: str) -> list[float]:
        scrape_ = self.scrapes[index]
        return [v for (n, ls), v in scrape_.items()
                if n == name and all(dict(ls).get(k) == x for k, x in labels.items())]

    def peak(self, name: str, **labels: str) -> float:
        """Largest per-scrape sum of ``name`` over the matching series."""
        return max(sum(self.values_at(i, name, **labels)) for i in range(len(self.scrapes)))


class Recorder:
    """Scrape ``targets`` every ``interval_s`` in a thread until stopped."""

    def __init__(self, targets: list[Target], interval_s: float):
        self.targets = targets
        self.recording = Recording(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scrape_all(self) -> dict[tuple[str, Labels], float]:
        values: dict[tuple[str, Labels], float] = {}
        for target in self.targets:
            base = (("instance", target.instance), ("job", target.job))
            try:
                found = scrape(target.url)
                up = 1.0
            except OSError as error:
                self.recording.errors.append(f"{target.job}: {error}")
                found, up = {}, 0.0
            for (name, labels), value in found.items():
                values[(name, tuple(sorted((*labels, *base))))] = value
            values[("up", base)] = up
        return values

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.recording.scrapes.append(self._scrape_all())
            next_at += self.recording.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _series_text(name: str, labels: Labels) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def _values_text(values: list[float | None]) -> str:
    return " ".join("_" if v is None else f"{v:g}" for v in values)


def _annotations(rule: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them (only ``$labels.x`` is used)."""
    def expand(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)

    return {key: expand(value) for key, value in rule.get("annotations", {}).items()}


@dataclass(frozen=True)
class Expect:
    """At ``at_s`` (replayed time) alert ``alert`` fires exactly with ``labels`` (none: silent)."""

    at_s: float
    alert: str
    labels: tuple[dict[str, str], ...] = ()


def promtool_test(
    rules_file: Path, recording: Recording, expectations: Iterable[Expect], work: Path,
    replay_interval_s: float = REPLAY_INTERVAL_S, promtool: str = "promtool",
) -> subprocess.CompletedProcess[str]:
    """``promtool test rules``: each expectation holds on the recording, replayed scrape by scrape
    at ``replay_interval_s`` (Prometheus' default scrape interval), so the rules' ``for:``
    windows (5 minutes at most) pass in a recording of seconds. Values are as recorded."""
    rules = {r["alert"]: r for g in yaml.safe_load(rules_file.read_text())["groups"]
             for r in g["rules"]}  # fmt: skip
    checks = []
    for expect in expectations:
        rule = rules[expect.alert]
        alerts = []
        for labels in expect.labels:
            full = {**labels, **rule.get("labels", {})}
            alerts.append({"exp_labels": full, "exp_annotations": _annotations(rule, full)})
        checks.append({"eval_time": f"{expect.at_s:g}s", "alertname": expect.alert,
                       "exp_alerts": alerts})  # fmt: skip
    series = recording.series(("pgbouncer_", "pg_", "up"))
    document = {
        "rule_files": [str(rules_file.resolve())],
        "evaluation_interval": f"{replay_interval_s:g}s",
        "tests": [{
            "interval": f"{replay_interval_s:g}s",
            "input_series": [{"series": _series_text(n, ls), "values": _values_text(v)}
                             for (n, ls), v in series.items()],
            "alert_rule_test": checks,
        }],
    }  # fmt: skip
    test_file = work / f"alerts-test-{len(list(work.glob('alerts-test-*')))}.yml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
