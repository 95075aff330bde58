"""The resolver's providers and the shared table (kilnbus.providers) name the same providers, and the
resolver closes the clients its providers were made with. In memory: nothing is resolved."""

from __future__ import annotations

import pytest

from kiln_resolver.providers import make_providers
from kiln_resolver.providers.registry import Providers
from kiln_resolver.registry import Registry
from kiln_resolver.settings import Settings
from kilnbus.providers import PROVIDERS, ProviderTableMismatch, check_implemented


async def test_every_provider_in_the_table_has_an_implementation_and_no_other() -> None:
    providers = make_providers(Settings())
    try:
        assert list(providers) == list(PROVIDERS)
        assert all(p.name == name for name, p in providers.items())
    finally:
        await providers.aclose()


def test_positive_control_a_mismatch_either_way_is_refused() -> None:
    """The check above would catch a provider added to one side only."""
    check_implemented(PROVIDERS)  # as it is: nothing to say
    with pytest.raises(ProviderTableMismatch, match="in the table but not implemented by the resolver: gl$"):
        check_implemented([p for p in PROVIDERS if p != "gl"])
    with pytest.raises(ProviderTableMismatch, match="implemented by the resolver but not in kilnbus.providers: swhid"):
        check_implemented([*PROVIDERS, "swhid"])


class _Client:
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_providers_close_their_clients_once() -> None:
    a, b = _Client(), _Client()
    providers = Providers([], closers=[a.aclose, b.aclose])
    await providers.aclose()
    await providers.aclose()  # a second stop closes nothing again
    assert (a.closed, b.closed) == (1, 1)


async def test_the_real_providers_and_registry_clients_are_closed() -> None:
    providers = make_providers(Settings())
    clients = [providers["gh"]._api._client, providers["gist"]._api._client, providers["gl"]._client]  # type: ignore[attr-defined]
    registry = Registry("http://127.0.0.1:5000")
    assert not any(c.is_closed for c in [*clients, registry._client]), "control: open until closed"
    await providers.aclose()
    await registry.aclose()
    assert all(c.is_closed for c in [*clients, registry._client])
