"""Software Heritage identifiers resolve through the archive's API to the directory that is built: a
directory as itself, a revision, release or snapshot (its HEAD) through what they point to. The API is
answered by the stand-in on loopback (tests/support/datahost.py), from objects the tests add."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from kiln_resolver.images import image_name
from kiln_resolver.providers import ResolveError, make_providers
from kiln_resolver.providers.registry import Providers
from kiln_resolver.settings import Settings
from kilnbus import MemoryBus, Phase

from ..support.datahost import DataHost
from .harness import FakeRegistry, Resolving


def swh_settings(host: DataHost, **more: object) -> Settings:
    return Settings(swh_url=host.base("swh"), allowed_private_hosts=["127.0.0.1"], **more)  # type: ignore[arg-type]


@pytest.fixture
async def providers(datahost: DataHost) -> AsyncIterator[Providers]:
    providers = make_providers(swh_settings(datahost))
    yield providers
    await providers.aclose()


async def test_a_directory_resolves_to_itself_and_names_the_image(datahost: DataHost, providers: Providers) -> None:
    tree = datahost.add_swh_directory({"requirements.txt": b"numpy\n"})
    r = await providers["swh"].resolve(f"swh:1:dir:{tree}")
    assert (r.ref, r.content, r.build_slug, r.resolved_spec) == (tree, "swh", f"swh-{tree}", f"swh:1:dir:{tree}")
    assert r.repo_url == f"{datahost.base('swh')}/api/1/vault/flat/swh:1:dir:{tree}/", "the vault's URL for it"
    assert r.ref_url == f"{datahost.base('swh')}/swh:1:dir:{tree}"
    assert image_name("r/binder-", r.build_slug, r.ref).endswith(f":{tree}")
    assert f"/swh/api/1/directory/{tree}/" in datahost.requests, "checked to exist"


async def test_revision_release_and_snapshot_lead_to_their_directory_and_share_its_image(
        datahost: DataHost, providers: Providers) -> None:
    tree = datahost.add_swh_directory({"environment.yml": b"name: x\n"})
    rev = datahost.add_swh_revision(tree)
    rel = datahost.add_swh_release("revision", rev)
    snp = datahost.add_swh_snapshot({"HEAD": ("alias", "refs/heads/main"), "refs/heads/main": ("revision", rev),
                                     "refs/heads/other": ("revision", datahost.add_swh_revision("0" * 40))})
    by_dir = await providers["swh"].resolve(f"swh:1:dir:{tree}")
    for swhid in (f"swh:1:rev:{rev}", f"swh:1:rel:{rel}", f"swh:1:snp:{snp}"):
        r = await providers["swh"].resolve(swhid)
        assert (r.ref, r.build_slug, r.repo_url) == (by_dir.ref, by_dir.build_slug, by_dir.repo_url), swhid
        assert r.resolved_spec == swhid, "the object launched, already exact: a SWHID never moves"
    assert any(p.startswith(f"/swh/api/1/snapshot/{snp}/?branches_from=refs%2Fheads%2Fmain&branches_count=1")
               for p in datahost.requests), "one branch asked for by name, not the snapshot's every branch"


async def test_a_release_of_a_directory_and_a_snapshot_whose_head_is_a_release(datahost: DataHost,
                                                                                providers: Providers) -> None:
    tree = datahost.add_swh_directory({"a.txt": b"1"})
    rel = datahost.add_swh_release("directory", tree)
    snp = datahost.add_swh_snapshot({"HEAD": ("release", rel)})
    assert (await providers["swh"].resolve(f"swh:1:rel:{rel}")).ref == tree
    assert (await providers["swh"].resolve(f"swh:1:snp:{snp}")).ref == tree


async def test_qualifiers_are_dropped(datahost: DataHost, providers: Providers) -> None:
    tree = datahost.add_swh_directory({"a.txt": b"1"})
    rev = datahost.add_swh_revision(tree)
    r = await providers["swh"].resolve(f"swh:1:rev:{rev};origin=https://github.com/o/r;visit=swh:1:snp:{'1' * 40};path=/")
    assert (r.ref, r.resolved_spec) == (tree, f"swh:1:rev:{rev}")


@pytest.mark.parametrize(("kind", "says"), [("dir", "is not in the Software Heritage archive"),
                                            ("rev", "is not in the Software Heritage archive"),
                                            ("snp", "is not in the Software Heritage archive")])
async def test_an_object_the_archive_lacks_is_not_found(providers: Providers, kind: str, says: str) -> None:
    with pytest.raises(ResolveError, match=f"swh:1:{kind}:{'e' * 40} {says}") as e:
        await providers["swh"].resolve(f"swh:1:{kind}:{'e' * 40}")
    assert (e.value.cause, e.value.status) == ("repo_not_found", 404)


async def test_a_revision_whose_directory_the_archive_lacks_is_not_found(datahost: DataHost,
                                                                         providers: Providers) -> None:
    rev = datahost.add_swh_revision("d" * 40)
    with pytest.raises(ResolveError, match=f"swh:1:dir:{'d' * 40} is not in the") as e:
        await providers["swh"].resolve(f"swh:1:rev:{rev}")
    assert e.value.cause == "repo_not_found"


async def test_what_leads_to_no_directory_says_so(datahost: DataHost, providers: Providers) -> None:
    to_file = datahost.add_swh_release("content", "c" * 40)
    no_head = datahost.add_swh_snapshot({"refs/heads/main": ("revision", "a" * 40)})
    dangling = datahost.add_swh_snapshot({"HEAD": ("alias", "refs/heads/gone")})
    for swhid, says in ((f"swh:1:rel:{to_file}", "points to a content"), (f"swh:1:snp:{no_head}", "has no HEAD branch"),
                        (f"swh:1:snp:{dangling}", "has no refs/heads/gone branch")):
        with pytest.raises(ResolveError, match=says) as e:
            await providers["swh"].resolve(swhid)
        assert e.value.cause == "ref_not_found", swhid


async def test_a_release_cycle_ends(datahost: DataHost, providers: Providers) -> None:
    """Releases of releases are legal; an endless chain of them (a hostile archive) is not followed forever."""
    datahost.swh_releases["a" * 40] = ("release", "b" * 40)
    datahost.swh_releases["b" * 40] = ("release", "a" * 40)
    with pytest.raises(ResolveError, match="leads through more than 8 objects") as e:
        await providers["swh"].resolve(f"swh:1:rel:{'a' * 40}")
    assert e.value.cause == "ref_not_found" and len(datahost.requests) == 8


@pytest.mark.parametrize(("spec", "says"), [
    ("not-a-swhid", "is not a SWHID"),
    ("swh:1:dir:abc", "is not a SWHID"),
    ("swh:2:dir:" + "a" * 40, "is not a SWHID"),
    ("swh:1:dir:" + "A" * 40, "is not a SWHID"),
    ("swh:1:dir:" + "a" * 40 + "/../x", "is not a SWHID"),
    ("swh:1:cnt:" + "a" * 40, "is a single file"),
    ("swh:1:ori:" + "a" * 40, "names an origin"),
    ("swh:1:xyz:" + "a" * 40, "'xyz' is not a kind of Software Heritage object"),
])
async def test_a_malformed_swhid_is_a_bad_spec(datahost: DataHost, providers: Providers, spec: str, says: str) -> None:
    with pytest.raises(ResolveError, match=says) as e:
        await providers["swh"].resolve(spec)
    assert (e.value.cause, e.value.status) == ("bad_spec", 400)
    assert datahost.requests == [], "refused before anything is asked"


async def test_the_api_down_limiting_or_unreachable_is_said_so(datahost: DataHost, providers: Providers) -> None:
    tree = datahost.add_swh_directory({"a.txt": b"1"})
    datahost.overrides[f"/swh/api/1/directory/{tree}/"] = (503, {}, b"maintenance")
    with pytest.raises(ResolveError, match="answered 503") as e:
        await providers["swh"].resolve(f"swh:1:dir:{tree}")
    assert e.value.cause == "provider_unreachable"
    datahost.overrides[f"/swh/api/1/directory/{tree}/"] = (429, {}, b"")
    with pytest.raises(ResolveError, match="is limiting Kiln's requests") as e:
        await providers["swh"].resolve(f"swh:1:dir:{tree}")
    assert e.value.cause == "provider_rate_limited"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = make_providers(Settings(swh_url=f"http://127.0.0.1:{closed}", allowed_private_hosts=["127.0.0.1"]))
    try:
        with pytest.raises(ResolveError, match="could not be reached") as e:
            await nowhere["swh"].resolve(f"swh:1:dir:{tree}")
        assert (e.value.cause, e.value.status) == ("provider_unreachable", 503)
    finally:
        await nowhere.aclose()


async def test_an_archive_on_a_private_address_is_refused_unless_allowed(datahost: DataHost) -> None:
    providers = make_providers(Settings(swh_url=datahost.base("swh")))
    try:
        with pytest.raises(ResolveError, match="private network") as e:
            await providers["swh"].resolve(f"swh:1:dir:{'a' * 40}")
        assert e.value.cause == "private_host" and datahost.requests == []
    finally:
        await providers.aclose()


async def test_the_token_goes_to_the_api_and_never_into_the_build_request(datahost: DataHost) -> None:
    tree = datahost.add_swh_directory({"requirements.txt": b"numpy\n"})
    rev = datahost.add_swh_revision(tree)
    settings = swh_settings(datahost, swh_access_token="swh-secret-token")
    async with Resolving(MemoryBus(settings), settings, FakeRegistry()) as resolving:
        rid = await resolving.launch("swh", f"swh:1:rev:{rev}")
        assert resolving.outcome(rid).phase is Phase.RESOLVED
        [(_, build)] = resolving.builds()
        topics = resolving.bus.topics
        published = [r.value for t in (topics.phase_events, topics.build_requested) for r in resolving.bus.raw(t)]
    assert published and not any(b"swh-secret-token" in value for value in published), "no event carries the token"
    assert (build.content, build.ref, build.provider, build.resolved_spec) == ("swh", tree, "swh", f"swh:1:rev:{rev}")
    assert build.repo_url.endswith(f"/swh/api/1/vault/flat/swh:1:dir:{tree}/")
    assert build.image_name.endswith(f":{tree}") and f"swh-2d{tree}" in build.image_name
    assert {auth for _, auth in datahost.authorizations} == {"Bearer swh-secret-token"}
