"""JupyterHub for Kiln on one machine: DockerSpawner, servers isolated on a network of their own.

The hub and the proxy listen on loopback, except the hub's API, which listens on the gateway
address of the user network (deploy/local/network.sh), the one place on the host a server may reach.

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
  KILN_USER_NETWORK           the Docker network servers run on (kiln-users)
  KILN_USER_GATEWAY           the host's address on that network; the hub's API listens there (172.29.0.1)
  KILN_SERVER_MEM_LIMIT       memory limit of each server (2G, as mybinder.org)
  KILN_SERVER_CPU_LIMIT       CPU limit of each server, in cores (1)
  KILN_SERVER_PIDS_LIMIT      processes and threads each server may have at once (1024)
  KILN_SERVER_ALLOW_ORIGIN    origins whose pages may use a server's API and kernels (Thebe, Jupyter Book,
                              MyST); default: the gateway's KILN_CORS_ALLOW_ORIGIN, as BinderHub does, in the
                              auth-free mode only; empty: none
"""

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from dockerspawner import DockerSpawner

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


class IsolatedDockerSpawner(DockerSpawner):
    """DockerSpawner for servers on Kiln's user network, waiting for each server's port.

    A server runs as uid 1000 with no capabilities, no new privileges and limits on memory, CPU and
    processes, in a network namespace of its own: it reaches the internet and the hub's API, and
    nothing else on the host (deploy/local/network.sh holds the firewall rules).
    """

    async def start(self):
        ip, port = await super().start()
        await self._wait_for_port(ip, port)
        return ip, port

    async def _wait_for_port(self, ip, port):
        """Return once the server accepts connections (or its container has stopped).

        The hub checks a new server with randomised exponential backoff, waits of up to 5 s, so a
        server that is up at 2 s is often seen at 3 to 6 s. Polling the port every 10 ms here makes
        the hub's first check find it up (a connection attempt on the bridge costs microseconds).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        tries = 0
        while loop.time() < deadline:
            try:
                _, writer = await asyncio.open_connection(ip, port)
                writer.close()
                return
            except OSError:
                pass
            # Asking the engine whether the container still runs costs a Docker API call: twice a second.
            tries += 1
            if tries % 50 == 0 and await self.poll() is not None:
                return  # the container stopped: the hub's own check reports that
            await asyncio.sleep(0.01)

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
# The hub's API is the one thing on the host that servers reach (jupyterhub-singleuser checks tokens,
# completes OAuth and reports activity there): it listens on the user network's gateway address, which
# the firewall opens to servers for this port only. Kiln's launcher reaches it there too.
user_gateway = os.environ.get("KILN_USER_GATEWAY", "172.29.0.1")
hub_api_port = int(os.environ.get("KILN_HUB_API_PORT", "8081"))
c.JupyterHub.hub_bind_url = f"http://{user_gateway}:{hub_api_port}"
c.JupyterHub.hub_connect_url = f"http://{user_gateway}:{hub_api_port}"
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "cookie_secret")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(os.environ.get('KILN_PROXY_API_PORT', '8001'))}"
c.ConfigurableHTTPProxy.command = [os.environ.get("KILN_CHP", str(state / "chp/node_modules/.bin/configurable-http-proxy"))]
c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")
# The start request answers at once; the launcher follows the progress stream instead.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
c.JupyterHub.allow_named_servers = True
# Logged-in users could start servers straight through the hub API, past the launcher's quota: the
# hub holds them to the same number (KILN_SERVERS_PER_USER; 0: no limit).
c.JupyterHub.named_server_limit_per_user = int(os.environ.get("KILN_SERVERS_PER_USER", "5"))
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

c.JupyterHub.spawner_class = IsolatedDockerSpawner
c.DockerSpawner.network_name = os.environ.get("KILN_USER_NETWORK", "kiln-users")
c.DockerSpawner.use_internal_ip = True  # the proxy reaches each server at its address on that network
c.DockerSpawner.remove = True
c.DockerSpawner.mem_limit = os.environ.get("KILN_SERVER_MEM_LIMIT", "2G")
c.DockerSpawner.cpu_limit = float(os.environ.get("KILN_SERVER_CPU_LIMIT", "1"))
# Strangers' code: uid 1000 whatever the image says (Dockerfile repositories too, as on mybinder.org),
# no capabilities, no setuid escalation, a bounded number of processes (a fork bomb stays inside).
c.DockerSpawner.extra_create_kwargs = {"user": "1000"}
c.DockerSpawner.extra_host_config = {
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "pids_limit": int(os.environ.get("KILN_SERVER_PIDS_LIMIT", "1024")),
}
# Images come only from Kiln's own registry (allowed_images), which is on this machine: pull what the
# engine lacks (built by another builder, or pruned), never anything from elsewhere.
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.image = base_image
c.DockerSpawner.allowed_images = allowed_images
c.DockerSpawner.name_template = "kiln-{username}--{servername}"
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.ip = "0.0.0.0"  # inside the server's own network namespace
c.Spawner.port = 8888
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60
c.Spawner.default_url = "/lab"
# Binder links carry ?token=; JupyterHub 6 servers refuse that unless told otherwise.
c.Spawner.environment = {"JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"}
# Pages on other sites (Thebe, Jupyter Book, MyST) start kernels on a Binder server: its Jupyter
# server must allow their origin. BinderHub gives servers its own CORS origin when one is set.
# With logged-in users (KILN_HUB_AUTH=dummy) the origin is not inherited: their servers would then
# accept another site's page, so it must be asked for by name. Either way pages from that origin
# reach a server with its token, never with the hub's cookie (no cookie-authenticated websockets).
inherited = os.environ.get("KILN_CORS_ALLOW_ORIGIN", "") if os.environ.get("KILN_HUB_AUTH", "none") == "none" else ""
allow_origin = os.environ.get("KILN_SERVER_ALLOW_ORIGIN", inherited)
if allow_origin:
    c.Spawner.args = [f"--ServerApp.allow_origin={allow_origin}"]
    c.Spawner.environment["JUPYTERHUB_ALLOW_WEBSOCKET_COOKIE_AUTH"] = "0"

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
        "scopes": ["admin:users", "admin:servers", "tokens", "read:hub", "users:activity"],
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
