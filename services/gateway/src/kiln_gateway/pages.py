"""The HTML pages: home with its launch form, the /v2 loading page, about, errors."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from kiln_gateway import metrics
from kiln_gateway.auth import HubAuth
from kiln_gateway.buildtokens import BuildTokens
from kiln_gateway.clientaddr import ClientAddresses, client_key
from kiln_gateway.ratelimit import RateLimiter
from kiln_gateway.settings import Settings
from kiln_gateway.specs import SpecError, launch_path, parse
from kilnbus.providers import PROVIDERS, Provider

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def raw_tail(request: Request, prefix: str) -> str:
    """The part of the *undecoded* path after ``prefix``: a git URL's ``%2F`` must stay encoded."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1")
    return path[len(prefix):] if path.startswith(prefix) else request.path_params.get("spec", "")


def form_config(p: Provider) -> dict[str, Any]:
    """What the home page's script needs of a provider (static/index.js): the table's fields, in JavaScript's terms."""
    return {"id": p.id, "display_name": p.display_name, "spec_pattern": p.spec_pattern, "repo_label": p.repo_label,
            "placeholder": p.placeholder, "url_encode": p.url_encode, "ref_enabled": p.ref_enabled,
            "detect": p.detect.replace("(?P<", "(?<") if p.detect else None}  # JavaScript's named-group syntax


class Pages:
    def __init__(self, settings: Settings, build_tokens: BuildTokens, rate_limiter: RateLimiter,
                 addresses: ClientAddresses) -> None:
        """``rate_limiter`` is the /build door's own: a page load and a launch share one budget."""
        self._settings = settings
        self._build_tokens = build_tokens
        self._rate_limiter = rate_limiter
        self._addresses = addresses
        self._common = {
            "base_url": settings.base_url,
            "banner_message": settings.banner_message,
            "about_message": settings.about_message,
            "version": version("kiln-gateway"),
            "og_title": "The Binder Project",
        }

    def _render(self, request: Request, name: str, status_code: int = 200, **extra: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {**self._common, **extra}, status_code=status_code)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        reasons = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}
        return self._render(request, "not_found.html", status, status=status, reason=reasons.get(status, "Error"), message=message)

    async def home(self, request: Request) -> Response:
        config = {"base": self._base(request), "providers": [form_config(p) for p in PROVIDERS.values()]}
        return self._render(request, "index.html", providers=list(PROVIDERS.values()), page_config=config)

    async def about(self, request: Request) -> Response:
        return self._render(request, "about.html")

    async def loading(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        spec = raw_tail(request, f"{self._settings.base_url}v2/{provider}/")
        try:
            launch = parse(provider, spec, self._settings.max_spec_length)
            q = request.query_params
            urlpath = launch_path(q.get("urlpath"), q.get("labpath"), q.get("filepath"))
        except SpecError as exc:
            return self.error(request, exc.status, str(exc))  # before the charge: a typo costs no launch
        # The page hands out a build token whose first launch is not charged on /build, so the page
        # is where that launch is charged: per client, in the stream's own windows (ratelimit.py).
        # A browser is charged once per launch and, over the limit, gets this readable page rather
        # than an event stream its EventSource cannot show.
        headers: dict[str, str] = {}
        logged_in = self._settings.auth_enabled and HubAuth.user(request) is not None
        if self._rate_limiter.limit and not logged_in:
            verdict = self._rate_limiter.hit(client_key(self._addresses.of(request)))
            headers = verdict.headers()
            if not verdict.allowed:
                metrics.REFUSED.labels(reason="rate_limit").inc()
                wait = verdict.retry_after()
                refused = self.error(request, 429, f"Rate limit exceeded. Try again in {wait} seconds.")
                refused.headers.update({**headers, "Retry-After": str(wait)})
                return refused
        origin = request.headers.get("host", "")
        token = self._build_tokens.issue(provider, launch.spec, origin)
        config = {
            "base": self._base(request),
            "buildUrl": f"{self._settings.base_url}build/{provider}/{launch.spec}?build_token={quote(token)}",
            "urlpath": urlpath,
        }
        p = PROVIDERS[provider]
        page = self._render(request, "loading.html", spec=launch.spec, provider_name=p.display_name, page_config=config,
                            og_title=f"{p.display_name}: {launch.spec}")
        page.headers.update(headers)
        return page

    async def legacy_repo(self, request: Request) -> Response:
        """``/repo/<user>/<repo>[/<path>]`` -> ``/v2/gh/<user>/<repo>/master[?urlpath=<path>]`` as BinderHub does."""
        user, repo = request.path_params["user"], request.path_params["repo"]
        path = request.path_params.get("path", "")
        target = f"{self._settings.base_url}v2/gh/{quote(user)}/{quote(repo)}/master"
        if path:
            target += "?urlpath=" + quote(path, safe="")
        return RedirectResponse(target, status_code=302)

    def _base(self, request: Request) -> str:
        if self._settings.badge_base_url:
            return self._settings.badge_base_url.rstrip("/") + "/"
        return str(request.base_url).rstrip("/") + self._settings.base_url
