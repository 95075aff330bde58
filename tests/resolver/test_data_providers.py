"""Data repositories resolve as BinderHub resolves them: a spec to a record version, an image name after
it, and a build request telling the builder what kind of record to fetch. Their real APIs are answered
by stand-ins on loopback (tests/support/datahost.py), from records the tests make."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from kiln_resolver.images import image_name
from kiln_resolver.providers import ResolveError, make_providers
from kiln_resolver.providers.registry import Providers
from kiln_resolver.settings import Settings
from kilnbus import MemoryBus, Phase

from ..support.datahost import DataHost
from .harness import FakeRegistry, Resolving


def data_settings(host: DataHost, **more: object) -> Settings:
    return Settings(doi_resolver_url=host.base("doi"), zenodo_url=host.base("zenodo"), figshare_url=host.base("figshare"),
                    figshare_api_url=host.base("figshare-api") + "/v2", dataverse_urls=[host.base("dataverse")],
                    hydroshare_url=host.base("hydroshare"), swh_url=host.base("swh"), allowed_private_hosts=["127.0.0.1"],
                    **more)  # type: ignore[arg-type]


@pytest.fixture
async def providers(datahost: DataHost) -> AsyncIterator[Providers]:
    providers = make_providers(data_settings(datahost))
    yield providers
    await providers.aclose()


# Zenodo


async def test_zenodo_version_doi_resolves_to_its_record(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_zenodo("3242074", {"requirements.txt": b"numpy\n"}, concept="3242073")
    r = await providers["zenodo"].resolve(doi)
    assert (r.ref, r.build_slug, r.content) == ("3242074", "zenodo-3242074", "zenodo")
    assert r.repo_url == f"{datahost.base('zenodo')}/api/records/3242074"
    assert r.resolved_spec == "10.5281/zenodo.3242074" and r.ref_url == f"{datahost.base('doi')}/10.5281/zenodo.3242074"
    assert image_name("r/binder-", r.build_slug, r.ref) == "r/binder-zenodo-2d3242074-b993d2:3242074"


async def test_zenodo_concept_doi_resolves_to_the_latest_version(datahost: DataHost, providers: Providers) -> None:
    datahost.add_zenodo("3242074", {"a.txt": b"1"}, concept="3242073")
    datahost.add_zenodo("3242080", {"a.txt": b"2"}, concept="3242073")
    r = await providers["zenodo"].resolve("10.5281/zenodo.3242073")
    assert r.ref == "3242080" and r.resolved_spec == "10.5281/zenodo.3242080"
    assert (await providers["zenodo"].resolve("doi:10.5281/zenodo.3242074")).ref == "3242074", "a version stays pinned"


@pytest.mark.parametrize(("spec", "cause", "says"), [
    ("10.5281/zenodo.999", "repo_not_found", "DOI 10.5281/zenodo.999 not found"),
    ("not-a-doi", "bad_spec", "is not a DOI"),
])
async def test_zenodo_unknown_or_malformed_doi(providers: Providers, spec: str, cause: str, says: str) -> None:
    with pytest.raises(ResolveError, match=says) as e:
        await providers["zenodo"].resolve(spec)
    assert e.value.cause == cause


async def test_zenodo_doi_leading_elsewhere_or_to_a_record_the_api_lacks(datahost: DataHost, providers: Providers) -> None:
    datahost.dois["10.1234/other"] = f"{datahost.url}/raw/elsewhere"
    with pytest.raises(ResolveError, match="is not a record on") as e:
        await providers["zenodo"].resolve("10.1234/other")
    assert e.value.cause == "repo_not_found"
    datahost.dois["10.5281/zenodo.77"] = f"{datahost.base('zenodo')}/records/77"  # a DOI whose record is gone
    with pytest.raises(ResolveError, match="Zenodo record 77 .* not found") as e:
        await providers["zenodo"].resolve("10.5281/zenodo.77")
    assert e.value.cause == "repo_not_found"


async def test_zenodo_api_down_is_unreachable_not_missing(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_zenodo("5", {"a.txt": b"1"})
    datahost.overrides["/zenodo/api/records/5"] = (503, {}, b"maintenance")
    with pytest.raises(ResolveError, match="answered 503") as e:
        await providers["zenodo"].resolve(doi)
    assert e.value.cause == "provider_unreachable"


async def test_an_api_whose_name_does_not_resolve_is_unreachable_not_missing(
        datahost: DataHost, providers: Providers, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name lookup is replaced (a name that fails to resolve cannot be made here without asking an
    outside DNS server): doi.org failing to resolve is Kiln's network's fault, told as such (503)."""
    import kilnbus.guardedhttp
    from kilnbus.urlguard import UnsafeRepoURL

    async def no_such_name(host: str, allowed: list[str]) -> list[str]:
        raise UnsafeRepoURL(f"The host {host!r} does not resolve.", "provider_unreachable", 404)

    monkeypatch.setattr(kilnbus.guardedhttp, "public_addresses", no_such_name)
    with pytest.raises(ResolveError, match="could not be reached: The host '127.0.0.1' does not resolve") as e:
        await providers["zenodo"].resolve("10.5281/zenodo.3242074")
    assert (e.value.cause, e.value.status) == ("provider_unreachable", 503)


async def test_a_doi_redirect_to_a_private_address_is_refused(datahost: DataHost, providers: Providers) -> None:
    """Only the test's own loopback is allowed: a DOI leading into a private network is not followed."""
    datahost.dois["10.5281/zenodo.66"] = "http://10.0.0.1/records/66"
    with pytest.raises(ResolveError, match="private network") as e:
        await providers["zenodo"].resolve("10.5281/zenodo.66")
    assert e.value.cause == "private_host"
    assert not any("10.0.0.1" in p for p in datahost.requests)


# Through the resolver: the build request says what to fetch


async def test_the_build_request_carries_the_record_and_its_kind(datahost: DataHost) -> None:
    doi = datahost.add_zenodo("3242074", {"requirements.txt": b"numpy\n"})
    settings = data_settings(datahost)
    async with Resolving(MemoryBus(settings), settings, FakeRegistry()) as resolving:
        rid = await resolving.launch("zenodo", doi)
        assert resolving.outcome(rid).phase is Phase.RESOLVED
        [(_, build)] = resolving.builds()
    assert (build.content, build.ref, build.provider, build.spec) == ("zenodo", "3242074", "zenodo", doi)
    assert build.repo_url.endswith("/zenodo/api/records/3242074")
    assert build.image_name.endswith("zenodo-2d3242074-b993d2:3242074")


# Figshare


async def test_figshare_doi_with_a_version_resolves_to_it(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_figshare("9782777", {1: {"a.txt": b"1"}, 2: {"a.txt": b"2"}})
    r = await providers["figshare"].resolve(f"{doi}.v1")
    assert (r.ref, r.build_slug, r.content) == ("9782777.v1", "figshare-9782777.v1", "figshare")
    assert r.repo_url == f"{datahost.base('figshare-api')}/v2/articles/9782777/versions/1"
    assert r.resolved_spec == "10.6084/m9.figshare.9782777.v1"
    assert r.ref_url == f"{datahost.base('doi')}/10.6084/m9.figshare.9782777.v1"


async def test_figshare_doi_without_a_version_resolves_to_the_latest(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_figshare("9782777", {1: {"a.txt": b"1"}, 3: {"a.txt": b"3"}})
    r = await providers["figshare"].resolve(doi)
    assert r.ref == "9782777.v3" and r.resolved_spec == "10.6084/m9.figshare.9782777.v3"


@pytest.mark.parametrize(("spec", "cause", "says"), [
    ("10.6084/m9.figshare.9782777.v7", "ref_not_found", "has no version 7"),
    ("10.6084/m9.figshare.1234", "repo_not_found", "DOI 10.6084/m9.figshare.1234 not found"),
    ("10.6084/m9.figshare", "bad_spec", "is not a Figshare DOI"),
    ("10.5281/zenodo.3242074", "bad_spec", "is not a Figshare DOI"),
])
async def test_figshare_bad_version_unknown_article_or_malformed_doi(datahost: DataHost, providers: Providers, spec: str,
                                                                    cause: str, says: str) -> None:
    datahost.add_figshare("9782777", {1: {"a.txt": b"1"}})
    # a version whose DOI was registered but which the API does not show (withdrawn, embargoed)
    datahost.dois["10.6084/m9.figshare.9782777.v7"] = f"{datahost.base('figshare')}/articles/dataset/t/9782777/7"
    with pytest.raises(ResolveError, match=says) as e:
        await providers["figshare"].resolve(spec)
    assert e.value.cause == cause


async def test_figshare_article_the_api_does_not_know(datahost: DataHost, providers: Providers) -> None:
    datahost.dois["10.6084/m9.figshare.555"] = f"{datahost.base('figshare')}/articles/dataset/t/555"
    with pytest.raises(ResolveError, match="Figshare article 555 .*not found") as e:
        await providers["figshare"].resolve("10.6084/m9.figshare.555")
    assert e.value.cause == "repo_not_found"


# doi: whichever data repository serves the DOI


async def test_doi_resolves_through_the_provider_that_serves_it(datahost: DataHost, providers: Providers) -> None:
    zenodo_doi = datahost.add_zenodo("3242074", {"a.txt": b"1"}, concept="3242073")
    figshare_doi = datahost.add_figshare("9782777", {1: {"a.txt": b"1"}, 2: {"a.txt": b"2"}})
    by_doi = await providers["doi"].resolve(zenodo_doi)
    direct = await providers["zenodo"].resolve(zenodo_doi)
    assert by_doi == direct and by_doi.content == "zenodo", "the same record, so the same image"
    assert (await providers["doi"].resolve("doi:10.5281/zenodo.3242073")).ref == "3242074", "a concept DOI too"
    fig = await providers["doi"].resolve(figshare_doi)
    assert (fig.ref, fig.content, fig.build_slug) == ("9782777.v2", "figshare", "figshare-9782777.v2")


async def test_doi_of_a_figshare_article_without_figshare_in_it_is_read_from_its_landing_page(
        datahost: DataHost, providers: Providers) -> None:
    """Institutional Figshare DOIs have their own prefixes: the article and version are in the page it leads to."""
    datahost.add_figshare("4444", {1: {"a.txt": b"1"}, 2: {"a.txt": b"2"}})
    datahost.dois["10.5522/04.4444.v1"] = f"{datahost.base('figshare')}/articles/dataset/t/4444/1"
    r = await providers["doi"].resolve("10.5522/04.4444.v1")
    assert (r.ref, r.content, r.resolved_spec) == ("4444.v1", "figshare", "10.5522/04.4444.v1")


async def test_doi_served_by_no_known_repository_or_unknown(datahost: DataHost, providers: Providers) -> None:
    datahost.dois["10.1000/journal.article"] = f"{datahost.url}/raw/journal-page"
    with pytest.raises(ResolveError, match=r"not on a data repository this Binder launches from \(zenodo, figshare, hydroshare, dataverse") as e:
        await providers["doi"].resolve("10.1000/journal.article")
    assert e.value.cause == "repo_not_found"
    with pytest.raises(ResolveError, match="not found") as e:
        await providers["doi"].resolve("10.1000/nothing")
    assert e.value.cause == "repo_not_found"


async def test_a_doi_launch_builds_the_records_image(datahost: DataHost) -> None:
    doi = datahost.add_zenodo("3242074", {"requirements.txt": b"numpy\n"})
    settings = data_settings(datahost)
    async with Resolving(MemoryBus(settings), settings, FakeRegistry()) as resolving:
        rid = await resolving.launch("doi", doi)
        assert resolving.outcome(rid).phase is Phase.RESOLVED
        [(_, build)] = resolving.builds()
    assert (build.provider, build.content, build.ref) == ("doi", "zenodo", "3242074")
    assert build.image_name.endswith("zenodo-2d3242074-b993d2:3242074"), "the image a zenodo/ launch makes"


# Dataverse


async def test_dataverse_doi_resolves_to_the_latest_published_version(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_dataverse("10.7910/DVN/TJCLKP", {(1, 0): {"a.txt": b"1"}, (2, 1): {"a.txt": b"2"}})
    r = await providers["dataverse"].resolve(doi)
    assert (r.ref, r.content, r.resolved_spec) == ("1000.v2.1", "dataverse", "10.7910/DVN/TJCLKP")
    assert r.build_slug == "dataverse-dvn-2ftjclkp", "BinderHub's: the identifier escaped, lower case"
    assert r.repo_url == f"{datahost.base('dataverse')}/api/datasets/:persistentId/versions/2.1?persistentId=doi:10.7910/DVN/TJCLKP"
    assert r.ref_url == "https://doi.org/10.7910/DVN/TJCLKP"
    assert await providers["doi"].resolve(doi) == r


async def test_dataverse_file_doi_stands_for_its_dataset(datahost: DataHost, providers: Providers) -> None:
    datahost.add_dataverse("10.7910/DVN/6ZXAGT", {(1, 0): {"a.txt": b"1"}})
    datahost.dataverse_file_dois["doi:10.7910/DVN/6ZXAGT/3YRRYJ"] = "doi:10.7910/DVN/6ZXAGT"
    datahost.dois["10.7910/DVN/6ZXAGT/3YRRYJ"] = f"{datahost.base('dataverse')}/citation?persistentId=doi:10.7910/DVN/6ZXAGT/3YRRYJ"
    r = await providers["dataverse"].resolve("10.7910/DVN/6ZXAGT/3YRRYJ")
    assert r.resolved_spec == "10.7910/DVN/6ZXAGT" and r.ref == "1000.v1.0"


async def test_dataverse_unknown_dataset_or_installation(datahost: DataHost, providers: Providers) -> None:
    datahost.dois["10.7910/DVN/GONE"] = f"{datahost.base('dataverse')}/citation?persistentId=doi:10.7910/DVN/GONE"
    with pytest.raises(ResolveError, match="dataset 10.7910/DVN/GONE not found") as e:
        await providers["dataverse"].resolve("10.7910/DVN/GONE")
    assert e.value.cause == "repo_not_found"
    datahost.dois["10.9999/ELSEWHERE"] = f"{datahost.url}/raw/other-dataverse/dataset.xhtml"
    with pytest.raises(ResolveError, match="not a Dataverse installation this Binder knows") as e:
        await providers["dataverse"].resolve("10.9999/ELSEWHERE")
    assert e.value.cause == "repo_not_found"


# HydroShare

HS_ID = "8f7c2f0341ef4180b0dbe97f59130756"


@pytest.mark.parametrize("spec", [HS_ID, f"https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F{HS_ID}%2F",
                                  f"https://www.hydroshare.org/resource/{HS_ID}"])
async def test_hydroshare_resource_by_id_or_url_is_versioned_by_its_modification(
        datahost: DataHost, providers: Providers, spec: str) -> None:
    datahost.add_hydroshare(HS_ID, {"a.txt": b"1"}, modified="2026-11-30T10:20:30.123456Z")
    r = await providers["hydroshare"].resolve(spec)
    version = f"{HS_ID}.v1796034030"  # 2026-11-30 10:20:30 UTC in whole seconds, as BinderHub counts
    assert (r.ref, r.build_slug, r.content) == (version, f"hydroshare-{version}", "hydroshare")
    assert r.repo_url == f"{datahost.base('hydroshare')}/django_s3/download/bags/{HS_ID}.zip"
    assert r.resolved_spec == r.ref_url == f"{datahost.base('hydroshare')}/resource/{HS_ID}"
    datahost.hydroshare[HS_ID].modified = "2026-12-01T00:00:00Z"
    assert (await providers["hydroshare"].resolve(spec)).ref != version, "a modified resource is a new version"


async def test_hydroshare_unknown_or_unnamed_resource(datahost: DataHost, providers: Providers) -> None:
    with pytest.raises(ResolveError, match="not found, or not public") as e:
        await providers["hydroshare"].resolve("0" * 32)
    assert e.value.cause == "repo_not_found"
    with pytest.raises(ResolveError, match="32 hexadecimal digits") as e:
        await providers["hydroshare"].resolve("my-resource")
    assert e.value.cause == "bad_spec"


async def test_hydroshare_doi_resolves_through_doi(datahost: DataHost, providers: Providers) -> None:
    doi = datahost.add_hydroshare(HS_ID, {"a.txt": b"1"})
    by_doi, by_id = await providers["doi"].resolve(doi), await providers["hydroshare"].resolve(HS_ID)
    assert (by_doi.ref, by_doi.repo_url, by_doi.content) == (by_id.ref, by_id.repo_url, "hydroshare")
    assert by_doi.provider == "hydroshare" and by_doi.build_slug == by_id.build_slug, "the same image either way"


# CKAN

async def test_ckan_dataset_now_and_at_an_activity(datahost: DataHost, providers: Providers) -> None:
    url = datahost.add_ckan("river-levels", {"levels.csv": b"a,b\n"}, modified="2026-11-30T10:20:30.123456",
                            activities={"a1b2c3": ("2026-01-02T03:04:05.000001", {"old.csv": b"x\n"})})
    r = await providers["ckan"].resolve(quote(url, safe=""))
    assert (r.ref, r.content, r.ref_url) == ("river-levels.v1796034030", "ckan", url)
    assert r.build_slug == "ckan-127.0.0.1-river-levels", "named after the site too"
    assert r.repo_url == f"{datahost.base('ckan')}/api/3/action/package_show?id=river-levels"
    for spec in (f"{url}/history/a1b2c3", f"{url}?activity_id=a1b2c3"):
        then = await providers["ckan"].resolve(quote(spec, safe=""))
        assert then.ref == "river-levels.v1767323045" and "activity_data_show?id=a1b2c3&object_type=package" in then.repo_url


@pytest.mark.parametrize(("spec", "cause"), [
    ("https://example.org/not-a-dataset", "bad_spec"),
    ("ftp://example.org/dataset/x", "bad_spec"),
    ("https://example.org/dataset/..%2F..%2Fapi", "bad_spec"),
])
async def test_ckan_urls_that_name_no_dataset(providers: Providers, spec: str, cause: str) -> None:
    with pytest.raises(ResolveError) as e:
        await providers["ckan"].resolve(quote(spec, safe=""))
    assert e.value.cause == cause


async def test_ckan_unknown_dataset_activity_or_site(datahost: DataHost) -> None:
    url = datahost.add_ckan("river-levels", {"levels.csv": b"a\n"})
    providers = make_providers(data_settings(datahost, ckan_urls=["https://ckan.example.org"]))
    with pytest.raises(ResolveError, match="not a CKAN site this Binder launches from") as e:
        await providers["ckan"].resolve(quote(url, safe=""))
    assert e.value.cause == "banned"
    await providers.aclose()
    providers = make_providers(data_settings(datahost, ckan_urls=[datahost.base("ckan")]))
    for spec in (url.replace("river-levels", "nope"), f"{url}/history/zzz"):
        with pytest.raises(ResolveError, match="has no") as e:
            await providers["ckan"].resolve(quote(spec, safe=""))
        assert e.value.cause == "repo_not_found"
    await providers.aclose()
