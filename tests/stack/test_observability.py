"""The Prometheus side: BinderHub's metric names where the concept is the same, and a scrape
configuration and Grafana dashboard in deploy/ that ask only for metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

# Importing each service's metrics module registers its metrics in the default registry.
import kiln_analytics.metrics  # noqa: F401
import kiln_builder.metrics
import kiln_gateway.metrics
import kiln_launcher.metrics
import kiln_resolver.metrics  # noqa: F401
import kilnbus.metrics  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"


def families() -> dict[str, set[str]]:
    """Every registered metric family and the label names of its samples."""
    out: dict[str, set[str]] = {}
    for metric in REGISTRY.collect():
        labels: set[str] = set()
        for sample in metric.samples:
            labels |= set(sample.labels) - {"le"}
        out[metric.name] = labels
    return out


def test_binderhub_metric_names_and_labels() -> None:
    have = families()
    # prometheus_client names a Counter's family without its _total suffix
    expected = {
        "binderhub_build_time_seconds": set(), "binderhub_launch_time_seconds": set(),
        "binderhub_build_count": set(), "binderhub_launch_count": set(),
        "binderhub_inprogress_builds": set(), "binderhub_inprogress_launches": set(),
        "binderhub_github_rate_limit_remaining": set(),
    }
    assert set(expected) <= set(have)
    # Label names are only visible once a labelled child exists: check them through the collectors.
    assert kiln_builder.metrics.BUILD_TIME._labelnames == ("status",)
    assert kiln_builder.metrics.BUILD_COUNT._labelnames == ("status", "provider", "repo")
    assert kiln_launcher.metrics.LAUNCH_TIME._labelnames == ("status", "retries")
    assert kiln_gateway.metrics.LAUNCHES._labelnames == ("status", "provider")
    assert list(kiln_builder.metrics.BUILD_TIME._upper_bounds) == [60, 120, 300, 600, 1800, 3600, 7200, float("inf")]


def test_dashboard_asks_only_for_exported_metrics() -> None:
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    names = set(families())
    asked: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b(?:kiln|binderhub)_[a-z_]+", target["expr"]):
                asked.add(re.sub(r"_(bucket|total|count|sum)$", "", name))
    missing = asked - names
    assert not missing, f"the dashboard queries metrics no service exports: {sorted(missing)}"
    assert len(asked) >= 12


def test_scrape_config_targets_the_local_stack_ports() -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    local = next(job for job in config["scrape_configs"] if job["job_name"] == "kiln-local")
    targets = {group["labels"]["service"]: group["targets"][0] for group in local["static_configs"]}
    env = (ROOT / "deploy" / "local" / "kiln.env").read_text()
    port = {name: re.search(rf"KILN_{name}:=(\d+)", env).group(1)  # type: ignore[union-attr]
            for name in ("GATEWAY_PORT", "ANALYTICS_PORT", "RESOLVER_METRICS_PORT", "BUILDER_METRICS_PORT",
                         "LAUNCHER_METRICS_PORT")}
    assert targets == {"gateway": f"127.0.0.1:{port['GATEWAY_PORT']}", "analytics": f"127.0.0.1:{port['ANALYTICS_PORT']}",
                       "resolver": f"127.0.0.1:{port['RESOLVER_METRICS_PORT']}",
                       "builder": f"127.0.0.1:{port['BUILDER_METRICS_PORT']}",
                       "launcher": f"127.0.0.1:{port['LAUNCHER_METRICS_PORT']}"}
