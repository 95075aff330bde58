"""The data-repository providers (Zenodo, ...), made from the resolver's settings around one guarded HTTP client."""

from __future__ import annotations

from kiln_resolver.providers.base import RepoProvider
from kiln_resolver.providers.ckan import CKANProvider
from kiln_resolver.providers.dataverse import DataverseProvider
from kiln_resolver.providers.doi import DoiProvider, DoiResolver
from kiln_resolver.providers.figshare import FigshareProvider
from kiln_resolver.providers.hydroshare import HydroShareProvider
from kiln_resolver.providers.swh import SwhProvider
from kiln_resolver.providers.zenodo import ZenodoProvider
from kiln_resolver.settings import Settings
from kilnbus.guardedhttp import GuardedHTTP


def data_providers(settings: Settings) -> tuple[list[RepoProvider], GuardedHTTP]:
    """The providers, in the table's order, and the client they share (to close)."""
    http = GuardedHTTP(["https", "http"], settings.allowed_private_hosts, settings.provider_timeout_s,
                       user_agent="Kiln (BinderHub-compatible)")
    doi = DoiResolver(http, settings.doi_resolver_url)
    zenodo = ZenodoProvider(http, doi, settings.zenodo_url)
    figshare = FigshareProvider(http, doi, settings.figshare_url, settings.figshare_api_url)
    dataverse = DataverseProvider(http, doi, settings.dataverse_urls)
    hydroshare = HydroShareProvider(http, doi, settings.hydroshare_url)
    swh = SwhProvider(http, settings.swh_url, settings.swh_access_token)
    return [zenodo, figshare, hydroshare, dataverse, CKANProvider(http, settings.ckan_urls),
            DoiProvider(doi, [zenodo, figshare, hydroshare, dataverse]), swh], http
