"""Writes what is derived from the services' settings classes, so it never drifts from them:

- deploy/helm/kiln/values.schema.json: the chart's values schema (unknown keys rejected at every
  level); each service's ``settings`` block accepts exactly that service's own settings;
- docs/settings-reference.md: every setting of every service, its variable, type, default and meaning.

    .venv/bin/python deploy/helm/generate.py          # write both
    .venv/bin/python deploy/helm/generate.py --check  # exit 1 if either is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from kiln_analytics.settings import Settings as AnalyticsSettings
from kiln_builder.settings import Settings as BuilderSettings
from kiln_gateway.settings import Settings as GatewaySettings
from kiln_launcher.settings import Settings as LauncherSettings
from kiln_resolver.settings import Settings as ResolverSettings
from kilnbus import BusSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "helm" / "kiln" / "values.schema.json"
REFERENCE = ROOT / "docs" / "settings-reference.md"
SERVICES: dict[str, type[BaseSettings]] = {"gateway": GatewaySettings, "resolver": ResolverSettings,
                                           "builder": BuilderSettings, "launcher": LauncherSettings,
                                           "analytics": AnalyticsSettings}
# Settings the chart sets from its own sections (kafka, registry, hub, secrets, builder.kubernetes);
# a service's `settings` block may not set them too.
CHART_OWNED = {
    "gateway": {"gateway_host", "gateway_port", "token_seal_keys", "build_token_secret", "resume_secret",
                "session_secret", "hub_api_url", "hub_public_url"},
    "resolver": {"image_prefix", "registry_url", "registry_username", "registry_password", "registry_token_url"},
    "builder": {"build_executor", "build_namespace", "build_image", "build_push_image", "build_push_registry", "build_cpu_request", "build_cpu_limit",
                "build_memory_request", "build_pod_memory_limit", "build_disk_limit", "build_timeout_s", "build_node_selector",
                "build_tolerations", "build_service_account", "build_docker_config_secret", "base_image", "env_image_prefix", "registry_url",
                "registry_username", "registry_password", "insecure_registries", "work_dir", "docker_url"},
    "launcher": {"token_seal_keys", "hub_api_url", "hub_public_url", "hub_api_token"},
    "analytics": {"analytics_host", "analytics_port", "analytics_group"},
}


def obj(properties: dict[str, Any], required: list[str] | None = None, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
INT: dict[str, Any] = {"type": "integer"}
FREE: dict[str, Any] = {"type": "object"}  # Kubernetes objects passed through as they are
LIST: dict[str, Any] = {"type": "array"}
SERVICE_NAMES = ["gateway", "resolver", "builder", "launcher", "analytics"]


def setting_schema(info: FieldInfo) -> dict[str, Any]:
    """A JSON schema for one setting, from its annotation (env values are strings, so strings are allowed too)."""
    text = str(info.annotation)
    if "bool" in text:
        kind: list[str] = ["boolean", "string"]
    elif "int" in text and "float" not in text:
        kind = ["integer", "string"]
    elif "float" in text:
        kind = ["number", "string"]
    elif "list" in text:
        kind = ["array", "string"]
    elif "dict" in text:
        kind = ["object", "string"]
    else:
        kind = ["string"]
    if "None" in text:
        kind.append("null")
    out: dict[str, Any] = {"type": kind}
    if info.description:
        out["description"] = info.description
    return out


def service_settings(name: str) -> dict[str, Any]:
    bus = set(BusSettings.model_fields)
    fields = {k: v for k, v in SERVICES[name].model_fields.items() if k not in bus and k not in CHART_OWNED[name]}
    return obj({k: setting_schema(v) for k, v in sorted(fields.items())},
               description=f"The {name}'s own settings (docs/settings-reference.md), as KILN_<NAME> variables.")


def autoscaling() -> dict[str, Any]:
    return obj({"enabled": BOOL, "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100}})


def service_block(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props = {"replicas": {"type": "integer", "minimum": 0}, "resources": FREE, "autoscaling": autoscaling(),
             "nodeSelector": {"type": "object", "additionalProperties": STR}, "tolerations": LIST, "affinity": FREE,
             "podAnnotations": {"type": "object", "additionalProperties": STR}, "settings": service_settings(name)}
    props.update(extra or {})
    return obj(props)


def values_schema() -> dict[str, Any]:
    service = obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": INT,
                   "annotations": {"type": "object", "additionalProperties": STR}})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Kiln Helm chart values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": FREE,  # Helm passes `global` to every chart
            "image": obj({"registry": STR, "prefix": STR, "tag": STR,
                          "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}),
            "imagePullSecrets": LIST,
            "kafka": obj({
                "bootstrap": STR,
                "securityProtocol": {"enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]},
                # one user per service: its name, and its password or the existing Secret's key for it
                "sasl": obj({"mechanism": {"enum": ["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]},
                             "usernames": obj({name: STR for name in SERVICE_NAMES}),
                             "passwords": obj({name: STR for name in SERVICE_NAMES}), "existingSecret": STR}),
                "tls": obj({"caSecret": STR, "caKey": STR}),
                "topicPrefix": STR, "partitions": {"type": "integer", "minimum": 1},
                "replication": {"type": "integer", "minimum": 1}, "phaseEventsRetentionMs": INT,
                "strimzi": obj({"enabled": BOOL, "clusterName": STR, "version": STR,
                                "replicas": {"type": "integer", "minimum": 1},
                                "storage": obj({"size": STR, "class": STR, "deleteClaim": BOOL}), "resources": FREE,
                                "authentication": BOOL}),
            }),
            "registry": obj({"url": STR, "username": STR, "password": STR, "image_prefix": STR, "token_url": STR,
                             "auth_config_url": STR, "insecure": BOOL, "pushUrl": STR,
                             "pull": obj({"username": STR, "password": STR, "secretName": STR})},
                            description="BinderHub's registry settings, same keys."),
            "secrets": obj({"existingSecret": STR, "tokenSealKey": STR, "buildTokenSecret": STR, "resumeSecret": STR,
                            "sessionSecret": STR}),
            "privateRepos": obj({"existingSecret": STR}),
            "hub": obj({"apiUrl": STR, "publicUrl": STR, "proxyUrl": STR, "tokenSecret": obj({"name": STR, "key": STR})}),
            "metrics": obj({"annotations": BOOL}),
            "networkPolicy": obj({
                "enabled": BOOL,
                "privateRanges": {"type": "array", "items": STR},
                "builds": obj({"extraEgress": LIST, "pushEgress": LIST}),
                "userServers": obj({"enabled": BOOL, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                    "extraEgress": LIST}),
                "gateway": obj({"from": LIST}), "analytics": obj({"from": LIST}), "metrics": obj({"from": LIST})}),
            "gateway": service_block("gateway", {"service": service, "ingress": obj({
                "enabled": BOOL, "className": STR, "annotations": {"type": "object", "additionalProperties": STR},
                "hosts": {"type": "array", "items": STR}, "tls": LIST})}),
            "resolver": service_block("resolver"),
            "builder": service_block("builder", {"baseImage": STR, "kubernetes": obj({
                "namespace": STR, "createNamespace": BOOL, "admissionPolicy": BOOL, "image": STR, "pushImage": STR, "resources": FREE,
                "nodeSelector": {"type": "object", "additionalProperties": STR}, "tolerations": LIST,
                "timeoutSeconds": {"type": "integer", "minimum": 60}})}),
            "launcher": service_block("launcher"),
            "analytics": service_block("analytics", {"service": service}),
            # zero-to-jupyterhub validates its own values with its own schema
            "jupyterhub": {"type": "object", "properties": {"enabled": BOOL}},
        },
    }


def type_name(annotation: Any) -> str:
    """``str``, ``list[str]``, ``int | None``: the annotation as it is written in the source."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("kiln_resolver.settings.", "")


def reference() -> str:
    lines = ["# Settings reference", "",
             "Generated by `deploy/helm/generate.py` from the services' settings classes; do not edit by hand.",
             "Every setting is an environment variable `KILN_<NAME>`; lists and maps are JSON. In the Helm chart, a",
             "service's own settings go under `<service>.settings` by name (`gateway.settings.rate_limit: 10`);",
             "those marked *chart* are set by the chart from its own sections.", ""]

    def table(model: type[BaseSettings], names: list[str], owned: set[str]) -> None:
        lines.extend(["| variable | type | default | meaning |", "|---|---|---|---|"])
        for name in names:
            info = model.model_fields[name]
            default = "(made at start)" if info.default_factory and name.endswith("secret") else (
                json.dumps(info.default_factory()) if info.default_factory else json.dumps(info.default))
            kind = type_name(info.annotation).replace("|", "\\|")
            meaning = (info.description or "").replace("|", "\\|") + (" *chart*" if name in owned else "")
            lines.append(f"| `KILN_{name.upper()}` | `{kind}` | `{default}` | {meaning} |")
        lines.append("")

    lines += ["## Every service: the bus", ""]
    table(BusSettings, list(BusSettings.model_fields), set(BusSettings.model_fields))
    for name, model in SERVICES.items():
        lines += [f"## {name}", ""]
        table(model, [k for k in model.model_fields if k not in BusSettings.model_fields], CHART_OWNED[name])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the chart's values schema and the settings reference.")
    parser.add_argument("--check", action="store_true", help="only check that both are up to date")
    args = parser.parse_args()
    wanted = {SCHEMA: json.dumps(values_schema(), indent=2) + "\n", REFERENCE: reference()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python deploy/helm/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
