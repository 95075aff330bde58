"""JupyterHub for Kiln on one machine: DockerSpawner with host networking, all on loopback.

Read by deploy/local/hub.sh. Settings come from the environment, with the local stack's defaults:
  KILN_STATE                  where the hub's installation and service tokens are
  KILN_HUB_DATA               this hub's database and secrets (default: $KILN_STATE/hub)
  KILN_HUB_PORT / _API_PORT   the proxy's public port (8000) and the hub API's (8081)
  KILN_REGISTRY_HOST          images from this registry may be launched (127.0.0.1:5000)
  KILN_LAUNCHER_TOKEN_FILE    the launcher service's API token
  KILN_HUB_AUTH               "none" (BinderHub's auth-free mode, default) or "dummy" (logged-in users;
                              the gateway becomes an OAuth client of the hub)
  KILN_GATEWAY_OAUTH_CALLBACK the gateway's /oauth_callback URL, in the authenticated mode
  KILN_CULL_IDLE_S            idle servers are stopped after this many seconds (600)
"""

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

# Started in the background by a script, the hub inherits SIGINT as ignored, and so would the
# services it starts (the idle culler), which then never stop when the hub asks them to.
signal.signal(signal.SIGINT, signal.default_int_handler)

state = Path(os.environ.get("KILN_STATE", ".state")) / "hub"
data = Path(os.environ.get("KILN_HUB_DATA", state))
data.mkdir(parents=True, exist_ok=True)
registry = os.environ.get("KILN_REGISTRY_HOST", "127.0.0.1:5000")
base_image_file = Path(os.environ.get("KILN_STATE", ".state")) / "base-image"
base_image = base_image_file.read_text().strip() if base_image_file.exists() else f"{registry}/kiln/base:latest"


class HostNetworkDockerSpawner(DockerSpawner):
    """DockerSpawner for host networking: a free loopback port per server, no port bindings.

    With network_mode=host Docker rejects port bindings, and `docker port` reports nothing, so the
    spawner picks the port itself and tells the hub where the server is.
    """

    async def start(self):
        self.port = random_port()
        result = await super().start()
        await self._wait_for_port()
        return result

    async def _wait_for_port(self):
        """Return once the server accepts connections (or its container has stopped).

        The hub checks a new server with randomised exponential backoff, waits of up to 5 s, so a
        server that is up at 2 s is often seen at 3 to 6 s. Polling the port every 50 ms here makes
        the hub's first check find it up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                pass
            if await self.poll() is not None:
                return  # the container stopped: the hub's own check reports that
            await asyncio.sleep(0.05)

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port

    def get_env(self):
        """BinderHub's launch metadata for the server, from the launcher's user options."""
        env = super().get_env()
        options = self.user_options or {}
        for key, name in (("repo_url", "BINDER_REPO_URL"), ("binder_ref_url", "BINDER_REF_URL"),
                          ("binder_launch_host", "BINDER_LAUNCH_HOST"), ("binder_request", "BINDER_REQUEST"),
                          ("binder_persistent_request", "BINDER_PERSISTENT_REQUEST"), ("binder_client_ip", "BINDER_CLIENT_IP")):
            if options.get(key):
                env[name] = str(options[key])
        return env


def allowed_images(spawner):
    """Any image from Kiln's registry (the launcher asks for the one it built), else the base image."""
    wanted = (spawner.user_options or {}).get("image", "")
    if re.fullmatch(re.escape(registry) + r"/[a-z0-9._/-]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?", wanted):
        return [wanted]
    return [base_image]


c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("KILN_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("KILN_HUB_API_PORT", "8081"))
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "cookie_secret")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(os.environ.get('KILN_PROXY_API_PORT', '8001'))}"
c.ConfigurableHTTPProxy.command = [os.environ.get("KILN_CHP", str(state / "chp/node_modules/.bin/configurable-http-proxy"))]
c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")
# The start request answers at once; the launcher follows the progress stream instead.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.cleanup_servers = True

auth = os.environ.get("KILN_HUB_AUTH", "none")
if auth == "none":
    # BinderHub's auth-free mode: users are temporary and made by the launcher; nobody logs in.
    c.JupyterHub.authenticator_class = "null"
elif auth == "dummy":
    c.JupyterHub.authenticator_class = "dummy"
    c.Authenticator.allow_all = True
else:
    sys.exit(f"KILN_HUB_AUTH={auth!r}: expected 'none' or 'dummy'")

c.JupyterHub.spawner_class = HostNetworkDockerSpawner
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
# Images come only from Kiln's own registry (allowed_images), which is on this machine: pull what the
# engine lacks (built by another builder, or pruned), never anything from elsewhere.
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.image = base_image
c.DockerSpawner.allowed_images = allowed_images
c.DockerSpawner.name_template = "kiln-{username}--{servername}"
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60
c.Spawner.default_url = "/lab"
# Binder links carry ?token=; JupyterHub 6 servers refuse that unless told otherwise.
c.Spawner.environment = {"JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"}

token_file = Path(os.environ.get("KILN_LAUNCHER_TOKEN_FILE", state / "launcher-token"))
c.JupyterHub.services = [
    {"name": "kiln-launcher", "api_token": token_file.read_text().strip()},
    {
        "name": "idle-culler",
        # Temporary users go with their servers; logged-in users (the authenticated mode) stay.
        "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                    f"--timeout={int(os.environ.get('KILN_CULL_IDLE_S', '600'))}", "--remove-named-servers=true",
                    f"--cull-users={'true' if auth == 'none' else 'false'}"],
    },
]
if auth == "dummy":
    # The gateway logs users in through the hub (BinderHub's auth_enabled): an OAuth client whose
    # secret is its service token. Its token needs no scopes of its own.
    c.JupyterHub.services.append({
        "name": "kiln-gateway",
        "api_token": (state / "gateway-token").read_text().strip(),
        "oauth_client_id": "service-kiln-gateway",
        "oauth_redirect_uri": os.environ.get("KILN_GATEWAY_OAUTH_CALLBACK", "http://127.0.0.1:8585/oauth_callback"),
        "oauth_no_confirm": True,
    })

c.JupyterHub.load_roles = [
    {
        # Only what launching needs: make and remove temporary users, start/stop/watch their servers,
        # and mint the token a server is reached with. Not admin.
        "name": "kiln-launcher",
        "scopes": ["admin:users", "admin:servers", "tokens", "read:hub"],
        "services": ["kiln-launcher"],
    },
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers", "admin:users"],
        "services": ["idle-culler"],
    },
]
if auth == "dummy":
    # Every hub user may log into Kiln's gateway (and still reach their own servers).
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", "access:services!service=kiln-gateway"]})
