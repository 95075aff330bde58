"""The launcher's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from pydantic import Field

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the launcher can be told; the bus settings included. Names follow BinderHub's."""

    hub_api_url: str = Field("http://127.0.0.1:8081/hub/api", description="JupyterHub's REST API, as the launcher reaches it.")
    hub_public_url: str = Field("http://127.0.0.1:8000", description="JupyterHub as users reach it: server URLs start here.")
    hub_api_token: str = Field("", description="The launcher's hub service token (scopes: admin:users, admin:servers, tokens).")
    token_seal_keys: list[str] = Field(default_factory=list, description="Fernet keys; the first seals server tokens on the bus.")
    total_quota: int | None = Field(
        100, ge=0,
        description="Running servers allowed in all (BinderHub's pod_quota); past it launches fail with 429. "
                    "Size it to the machines' memory (servers may use up to the hub's memory limit each). "
                    "None: no limit; 0: closed.")
    servers_per_user: int = Field(
        5, ge=0,
        description="Running servers one logged-in hub user may have at once (authenticated mode), like the named-server "
                    "limit BinderHub's authentication guide sets; 0: no limit.")
    servers_per_client: int = Field(
        20, ge=0,
        description="Running servers launched from one client address (IPv6: one /64) at once, in the anonymous mode; "
                    "enough for a small class behind one NAT, not for one client to take the whole Binder. "
                    "The gateway must see real client addresses (its trusted_proxies). 0: no limit.")
    quota_check_interval_s: float = Field(5.0, ge=0, description="How often the total and per-client quotas' count of "
                                          "running servers is asked of the hub; launches started in between are added to it.")
    launch_timeout_s: float = Field(600, gt=0, description="A server not ready within this time has failed to launch.")
    retries: int = Field(4, ge=1, description="Attempts at starting a server before the launch fails.")
    retry_delay_s: float = Field(4.0, ge=0, description="First wait between attempts; it doubles each time.")
    token_lifetime_s: int = Field(86400, ge=60, description="How long the token handed to the user is valid.")
    cull_check_interval_s: float = Field(30.0, gt=0, description="How often the launcher looks for servers the idle culler stopped.")
    hub_proxy_url: str = Field("", description="Where the launcher reaches users' servers through the hub's proxy, to hand "
                               "warm servers over; empty: hub_public_url.")
    pool_size: int = Field(1, ge=0, description="Warm servers kept started ahead of time for each popular image; a launch of "
                           "that image (anonymous mode) gets one at once. 0 turns warm pools off.")
    pool_images: list[str] = Field(default_factory=list, description="Images (as built: registry/name:tag) that always have "
                                   "a warm pool, besides the most launched ones.")
    pool_top_images: int = Field(2, ge=0, description="How many of the most launched images get a warm pool.")
    pool_min_launches: int = Field(2, ge=1, description="Launches within pool_window_s that make an image popular enough "
                                   "for a warm pool.")
    pool_window_s: float = Field(3600, gt=0, description="How far back launches count towards an image's popularity; an "
                                 "image with too few launches in it goes cold and its pool is emptied.")
    pool_memory_budget_mb: int = Field(4096, ge=0, description="Memory this launcher's warm servers together may take, "
                                       "in MB, each counted as pool_server_memory_mb (each replica has a budget of its own).")
    pool_server_memory_mb: int = Field(2048, gt=0, description="Memory one warm server is counted as, in MB: the servers' "
                                       "memory limit, which an image's own code may use before anyone has the server.")
    pool_max_age_s: float = Field(480, gt=0, description="A warm server unused this long is replaced by a fresh one; keep it "
                                  "below the idle culler's timeout, so that none is culled while waiting or just after hand-over.")
    pool_check_interval_s: float = Field(5.0, gt=0, description="How often pools are compared with the demand and refilled.")
