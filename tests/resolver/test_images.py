"""Image names: BinderHub-compatible, stable, within registry limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kiln_resolver.images import escape, image_name, safe_build_slug, split_image


def test_matches_binderhubs_published_example() -> None:
    """BinderHub names gh/binder-examples/octave's image binder-2dexamples-2doctave-03025a:<sha>."""
    assert image_name("", "binder-examples-octave", "1479e0252b2e") == "binder-2dexamples-2doctave-03025a:1479e0252b2e"


def test_escape() -> None:
    assert escape("a-b_c.d/é") == "a-2db-5fc-2ed-2f-c3-a9"


@given(st.text(min_size=1, max_size=2000), st.from_regex(r"[0-9a-f]{40}", fullmatch=True))
def test_names_are_valid_stable_and_bounded(slug: str, ref: str) -> None:
    prefix = "127.0.0.1:5000/kiln/binder-"
    name = image_name(prefix, slug, ref)
    assert name == image_name(prefix, slug, ref)
    repo = name.rsplit(":", 1)[0]
    assert len(repo) <= 255 and name == name.lower() and "_" not in name
    assert split_image(name) == ("127.0.0.1:5000", repo.split("/", 1)[1], ref)


def test_truncated_slugs_stay_distinct() -> None:
    a, b = "x" * 500 + "a", "x" * 500 + "b"
    assert safe_build_slug(a, 60) != safe_build_slug(b, 60)
    assert len(safe_build_slug(a, 60)) == 60
