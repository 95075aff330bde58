"""JupyterHub with KubeSpawner for Kiln on the test cluster (deploy/k8s/kiln.sh).

It stands where zero-to-jupyterhub's hub would (that chart cannot be fetched here) under the same
names: Services ``hub`` (8081) and ``proxy-public`` (80), the Secret ``hub`` holding
``hub.services.kiln-launcher.apiToken``, and the labels z2jh gives the hub and user pods, which
Kiln's NetworkPolicies select. Kiln's part of the configuration is not repeated here: the chart's
own ``jupyterhub`` values (mounted as values.yaml) are applied as z2jh applies them, so what is
tested is what an operator installs: ``hub.config``, ``hub.services``, ``hub.loadRoles``,
``hub.extraConfig`` (Kiln's spawner), ``singleuser`` and ``cull``.

Environment: POD_NAMESPACE, HELM_RELEASE, KILN_LAUNCHER_TOKEN, KILN_IMAGE_PREFIX (for the spawner).
"""

import os
import sys
from pathlib import Path

import yaml

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

values = yaml.safe_load(Path("/etc/jupyterhub/values.yaml").read_text())["jupyterhub"]
hub, singleuser, cull = values["hub"], values["singleuser"], values["cull"]
namespace = os.environ["POD_NAMESPACE"]
data = Path("/srv/jupyterhub/data")
data.mkdir(parents=True, exist_ok=True)

# Where z2jh puts them: the hub's API behind the Service "hub", the proxy (started by the hub, in
# its pod) behind "proxy-public".
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
c.JupyterHub.hub_connect_url = f"http://hub.{namespace}.svc.cluster.local:8081"
c.JupyterHub.bind_url = "http://0.0.0.0:8000"
c.JupyterHub.db_url = f"sqlite:///{data}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(data / "cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")

for section, settings in hub.get("config", {}).items():
    for name, value in settings.items():
        setattr(getattr(c, section), name, value)

tokens = {"kiln-launcher": os.environ["KILN_LAUNCHER_TOKEN"].strip()}
c.JupyterHub.services = [{"name": name, **({"api_token": tokens[name]} if name in tokens else {}), **(spec or {})}
                         for name, spec in hub.get("services", {}).items()]
c.JupyterHub.load_roles = [{"name": name, **role} for name, role in hub.get("loadRoles", {}).items()]

if cull.get("enabled"):
    command = [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={cull['timeout']}",
               f"--cull-every={cull['every']}", f"--cull-users={str(cull.get('users', False)).lower()}",
               f"--remove-named-servers={str(cull.get('removeNamedServers', False)).lower()}"]
    c.JupyterHub.services.append({"name": "cull-idle", "command": command})
    c.JupyterHub.load_roles.append({"name": "cull-idle", "services": ["cull-idle"],
                                    "scopes": ["list:users", "read:users:activity", "read:servers",
                                               "delete:servers", "admin:users"]})

# KubeSpawner as z2jh configures it for these values.
c.KubeSpawner.namespace = namespace
c.KubeSpawner.cmd = [singleuser["cmd"]] if isinstance(singleuser["cmd"], str) else singleuser["cmd"]
c.KubeSpawner.default_url = singleuser.get("defaultUrl", "")
c.KubeSpawner.image_pull_secrets = singleuser.get("image", {}).get("pullSecrets", [])
c.KubeSpawner.image_pull_policy = "IfNotPresent"
c.KubeSpawner.port = 8888
c.KubeSpawner.uid = 1000
c.KubeSpawner.allow_privilege_escalation = False
c.KubeSpawner.automount_service_account_token = False
c.KubeSpawner.common_labels = {"app": "jupyterhub", "release": os.environ["HELM_RELEASE"], "heritage": "jupyterhub"}
c.KubeSpawner.start_timeout = 300
c.KubeSpawner.http_timeout = 120
# singleuser.memory, .cpu and .extraResource as z2jh applies them: the chart's defaults are what this
# node holds (docs/operators.md on sizing the CPU guarantee to the node).
memory, cpu = singleuser.get("memory", {}), singleuser.get("cpu", {})
c.KubeSpawner.mem_limit, c.KubeSpawner.mem_guarantee = memory.get("limit"), memory.get("guarantee")
c.KubeSpawner.cpu_limit, c.KubeSpawner.cpu_guarantee = cpu.get("limit"), cpu.get("guarantee")
c.KubeSpawner.extra_resource_limits = singleuser.get("extraResource", {}).get("limits", {})
c.KubeSpawner.extra_resource_guarantees = singleuser.get("extraResource", {}).get("guarantees", {})
c.KubeSpawner.extra_pod_config = singleuser.get("extraPodConfig", {})

for name, code in sorted(hub.get("extraConfig", {}).items()):
    exec(compile(code, f"<hub.extraConfig.{name}>", "exec"), {"c": c, "get_config": lambda: c})  # noqa: S102
