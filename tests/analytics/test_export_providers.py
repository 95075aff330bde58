"""Analytics names providers from the shared table (kilnbus.providers): every provider Kiln launches
exports under a name BinderHub's launch schema (v6) allows, and only those."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln_analytics.export import launch_event
from kiln_analytics.requests import RequestRecord, fold
from kilnbus.providers import PROVIDERS
from tests.analytics.events import history, utc

SCHEMA = json.loads((Path(__file__).parent / "launch_v6.schema.json").read_text())


def launched(provider: str) -> RequestRecord:
    record = None
    for event in history(f"r-{provider}", utc(2026, 5, 1, 10), provider=provider):
        record = fold(record, event) or record
    assert record is not None and record.outcome == "ready"
    return record


@pytest.mark.parametrize("provider", [p for p, known in PROVIDERS.items() if known.schema_name])
def test_each_launchable_provider_exports_under_its_schema_name(provider: str) -> None:
    event = launch_event(launched(provider))
    assert event is not None and event["provider"] == PROVIDERS[provider].schema_name
    jsonschema.validate(event, SCHEMA)


def test_a_provider_outside_the_table_is_not_exported() -> None:
    assert launch_event(launched("swhid")) is None
    assert launch_event(launched("gh")) is not None, "control: the same history for a table provider is"


@pytest.mark.parametrize("provider", ["doi", "gitea", "bb", "swh"])
def test_kilns_own_providers_have_no_v6_name_and_are_not_exported(provider: str) -> None:
    """v6's provider enum is BinderHub's; a launch written under another provider's name would be false."""
    assert PROVIDERS[provider].schema_name is None and launch_event(launched(provider)) is None
    assert {p for p, known in PROVIDERS.items() if known.schema_name is None} == {"doi", "gitea", "bb", "swh"}
