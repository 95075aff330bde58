"""The gateway's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

import ipaddress
import secrets

from pydantic import Field, field_validator

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the gateway can be told; the bus settings included.

    Names follow BinderHub's traitlets where the concept is the same (docs/operators.md maps them).
    """

    gateway_host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    gateway_port: int = Field(8585, description="Port the gateway listens on (BinderHub's).")
    base_url: str = Field("/", description="Path prefix of every route (BinderHub's base_url).")
    badge_base_url: str = Field("", description="Base URL used in badge and launch-link snippets; default: the request's.")
    cors_allow_origin: str = Field("", description="Access-Control-Allow-Origin for the API (BinderHub's cors_allow_origin).")
    enable_api_only_mode: bool = Field(False, description="Serve only the API: no pages; allows build_only=true.")
    heartbeat_interval_s: float = Field(30.0, gt=0, description="Seconds between ':heartbeat' comments on an idle event stream.")
    stream_buffer: int = Field(256, ge=8, description="Events buffered per open stream before log lines are dropped.")
    stream_timeout_s: float = Field(900.0, gt=0, description="A stream with no event for this long ends with a failed event.")
    max_spec_length: int = Field(1024, ge=64, description="Longest <provider>/<spec> accepted, in characters.")
    publish_timeout_s: float = Field(10.0, gt=0, description="How long a launch request may wait for Kafka before it fails.")
    ban_networks: dict[str, str] = Field(
        default_factory=dict, description='Client networks refused, as JSON {"CIDR": "label"} (BinderHub\'s ban_networks).'
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDRs, JSON list, e.g. [\"10.0.0.0/8\"]) of the proxies in front of the gateway (Ingress "
                    "controller, load balancer). X-Forwarded-For is believed only from these, read from the right: the "
                    "first address that is not a trusted proxy is the client the rate limit, quotas and ban_networks see. "
                    "Default none: the direct peer is the client and X-Forwarded-For is ignored.",
    )
    rate_limit: int = Field(
        10, ge=0,
        description="Launches per client (an address; IPv6: a /64) per period; 0 turns it off. A /v2 loading page counts "
                    "as one (its build token's first launch is then free), as does each launch on /build without a fresh "
                    "token. Logged-in hub users are not limited.",
    )
    rate_limit_period_s: int = Field(3600, ge=1, description="Length of the rate-limit window in seconds.")
    keep_alive_s: int = Field(
        75, ge=1,
        description="How long an idle client connection is kept open. Longer than clients keep theirs (browsers, "
                    "httpx: 5 s), so the client closes first and never sends a request on a connection the gateway is "
                    "closing (the request would fail without an answer). nginx's default is the same.",
    )
    build_token_secret: str = Field(
        default_factory=lambda: secrets.token_hex(32),
        description="Secret signing build tokens; set it when running more than one gateway (random otherwise).",
    )
    build_token_expires_s: int = Field(300, ge=1, description="Lifetime of a build token.")
    build_token_check_origin: bool = Field(True, description="Refuse build tokens used from another origin.")
    token_seal_keys: list[str] = Field(
        default_factory=list, description="Fernet keys that open sealed server tokens (comma separated JSON list); shared with the launcher."
    )
    resume_secret: str = Field(
        default_factory=lambda: secrets.token_hex(32),
        description="Secret that signs event ids, so only the client that started a stream can resume it. Share it across gateways.",
    )
    event_id_lifetime_s: int = Field(
        86400, ge=60,
        description="How long an event id stays good for resuming a stream with Last-Event-ID; older ids are refused.",
    )
    about_message: str = Field("", description="HTML shown on the about page.")
    banner_message: str = Field("", description="HTML shown in a bar on every page.")
    hub_api_url: str = Field("http://127.0.0.1:8081/hub/api", description="JupyterHub API, for /health and the authenticated mode.")
    auth_enabled: bool = Field(False, description="Require a JupyterHub login; launches then belong to that hub user.")
    hub_public_url: str = Field("http://127.0.0.1:8000", description="JupyterHub as browsers reach it (for the login redirect).")
    hub_api_token: str = Field("", description="The gateway's own hub service token, its OAuth client secret (authenticated mode).")
    oauth_client_id: str = Field("service-kiln-gateway", description="The gateway's OAuth client id at the hub.")
    oauth_callback_url: str = Field("", description="Full URL of /oauth_callback as registered at the hub; default: derived from the request.")
    session_secret: str = Field(default_factory=lambda: secrets.token_hex(32),
                                description="Signs the login session cookie; share it across gateways.")
    health_cache_s: float = Field(10.0, ge=0, description="Seconds a /health result is reused.")
    service_groups: list[str] = Field(
        default_factory=lambda: ["kiln-resolver", "kiln-builder", "kiln-launcher"],
        description="Consumer groups /health reports on (members and lag).",
    )

    @field_validator("base_url")
    @classmethod
    def _slashes(cls, v: str) -> str:
        return "/" + v.strip("/") + "/" if v.strip("/") else "/"

    @field_validator("ban_networks")
    @classmethod
    def _cidrs(cls, v: dict[str, str]) -> dict[str, str]:
        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)  # a bad CIDR stops start-up with a clear error
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            ipaddress.ip_network(cidr.strip(), strict=False)  # a bad CIDR stops start-up with a clear error
        return v
