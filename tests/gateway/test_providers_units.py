"""The gateway's providers come from the shared table (kilnbus.providers): the form, /api/repoproviders
and the door offer exactly what the resolver can launch. In memory: the app is driven through
httpx's ASGI transport without its lifespan, so no broker is needed."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from kiln_gateway.settings import Settings
from kiln_gateway.specs import SpecError, parse
from kilnbus.providers import PROVIDERS

from .memory import memory_app

# What BinderHub's own providers.js and repoproviders handler expect of each entry (binderhub-inventory §2).
DISPLAY_KEYS = {"id", "displayName", "spec", "detect", "repo", "ref"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = memory_app(Settings(rate_limit=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_repoproviders_lists_the_table_in_binderhubs_shape(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/api/repoproviders")).json()
    assert [p["id"] for p in listed] == list(PROVIDERS)
    assert {"gh", "gist", "gl", "git", "zenodo"} <= set(PROVIDERS)
    for entry in listed:
        assert set(entry) == DISPLAY_KEYS
        assert set(entry["repo"]) == {"label", "placeholder", "urlEncode"}
        # BinderHub's data repositories have no ref to ask for: {"enabled": false}, as its providers say.
        git_based = PROVIDERS[entry["id"]].ref_enabled
        assert entry["ref"] == ({"enabled": True, "default": "HEAD"} if git_based else {"enabled": False})
        re.compile(entry["spec"]["validateRegex"])
    zenodo = next(p for p in listed if p["id"] == "zenodo")
    assert zenodo["displayName"] == "Zenodo DOI" and zenodo["spec"]["validateRegex"] == r"10\.\d+\/(.)+"
    gh = listed[0]
    assert gh["displayName"] == "GitHub" and gh["spec"]["validateRegex"] == r"[^/]+/[^/]+/.+"
    assert gh["detect"]["regex"].startswith("^(https?://github\\.com/)?")
    assert next(p for p in listed if p["id"] == "git")["detect"] is None


async def test_the_form_offers_the_table_and_nothing_else(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    select = re.search(r'<select[^>]*id="provider".*?</select>', page, re.DOTALL)
    assert select is not None
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', select.group(0))
    assert options == [(p.id, p.display_name) for p in PROVIDERS.values()]
    config = json.loads(re.search(r'<script[^>]*id="kiln-config"[^>]*>(.*?)</script>', page, re.DOTALL).group(1))  # type: ignore[union-attr]
    assert [p["id"] for p in config["providers"]] == list(PROVIDERS)
    # The script's regexes use JavaScript's named-group syntax.
    assert all("(?P<" not in (p["detect"] or "") for p in config["providers"])
    assert config["providers"][0]["detect"].startswith("^(https?://github\\.com/)?(?<repo>")


@pytest.mark.parametrize("provider", ["nope", "swhid", "hg"])
async def test_a_provider_the_resolver_cannot_launch_is_refused_clearly(client: httpx.AsyncClient, provider: str) -> None:
    known = ", ".join(PROVIDERS)
    with pytest.raises(SpecError, match=rf"No provider found for prefix '{provider}'. Kiln knows: {re.escape(known)}\.") as e:
        parse(provider, "10.5281/zenodo.3242074")
    assert e.value.status == 404
    page = await client.get(f"/v2/{provider}/10.5281/zenodo.3242074")
    assert page.status_code == 404 and "No provider found for prefix" in page.text
    stream = await client.get(f"/build/{provider}/10.5281/zenodo.3242074", headers={"Accept": "text/event-stream"})
    assert stream.status_code == 404
    assert '"phase": "failed"' in stream.text.replace('":"', '": "') and "No provider found for prefix" in stream.text


async def test_positive_control_a_known_provider_gets_past_the_door(client: httpx.AsyncClient) -> None:
    """The refusals above are for the prefix: the same request to a known provider is served."""
    page = await client.get("/v2/gh/org/repo/HEAD")
    assert page.status_code == 200 and "GitHub: org/repo/HEAD" in page.text


@pytest.mark.parametrize("provider, spec, ref", [
    ("gh", "org/repo/feature/x", "feature/x"), ("gist", "user/0123abcd", "HEAD"), ("gist", "user/0123abcd/v2", "v2"),
    ("gl", "group%2Fsub/v1.0", "v1.0"), ("git", "https%3A%2F%2Fh.example%2Fr.git/main", "main"),
    ("zenodo", "10.5281/zenodo.3242074", ""),
    ("swh", "swh:1:dir:" + "a" * 40, ""), ("swh", "swh:1:rev:" + "b" * 40 + ";origin=https://h.example/r", ""),
])
def test_each_tables_ref_layout(provider: str, spec: str, ref: str) -> None:
    assert parse(provider, spec).ref == ref


@pytest.mark.parametrize("spec", ["swh:1:dir:" + "a" * 39, "swh:2:dir:" + "a" * 40, "swh:1:dir:" + "A" * 40,
                                  "https://archive.softwareheritage.org/swh:1:dir:" + "a" * 40, "10.5281/zenodo.1"])
def test_a_malformed_swhid_is_refused_at_the_door(spec: str) -> None:
    """The resolver says why a well-formed SWHID of the wrong kind (cnt, ori) will not do; the door refuses the rest."""
    with pytest.raises(SpecError, match="is not a valid Software Heritage spec") as e:
        parse("swh", spec)
    assert e.value.status == 400
