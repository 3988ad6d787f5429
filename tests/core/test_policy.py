"""The publishing policy: the fingerprint covers every field; every field comes from Settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from heatmap.config import Settings
from heatmap.model import Window
from heatmap.policy import PublishPolicy
from heatmap.publish import version_of

FIELDS = [f.name for f in dataclasses.fields(PublishPolicy)]
CLOCK_ALIGNED = {"window_s": 600, "horizon_s": 600, "release_s": 30}


def _settings(**update: object) -> Settings:
    return Settings(db="/nonexistent/x.db", secret="x", basemap_url="", **update)  # type: ignore[arg-type]


def _perturb(value: Any) -> Any:
    """Return a different value of the same kind that Settings still accepts."""
    if value is None:
        return 0.5
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2
    if isinstance(value, tuple | list):
        return type(value)(_perturb(v) for v in value)
    raise AssertionError(f"no perturbation for {value!r}: extend _perturb")


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_changes_the_fingerprint(name: str) -> None:
    policy = PublishPolicy.from_settings(_settings())
    other = dataclasses.replace(policy, **{name: _perturb(getattr(policy, name))})
    assert other != policy
    assert other.fingerprint != policy.fingerprint
    w = Window(0, 300)
    assert version_of(w, 1, other) != version_of(w, 1, policy)


def test_the_fingerprint_is_stable() -> None:
    a = PublishPolicy.from_settings(_settings())
    b = PublishPolicy.from_settings(_settings())
    assert a.fingerprint == b.fingerprint
    assert version_of(Window(0, 300), 1, a) == version_of(Window(0, 300), 1, b)


@pytest.mark.parametrize("name", FIELDS)
def test_from_settings_reads_every_field(name: str) -> None:
    base = _settings()
    # Spans must stay multiples of the release clock (60 s); others are simply perturbed.
    value = CLOCK_ALIGNED.get(name) or _perturb(getattr(base, name))
    changed = _settings(**{name: value})
    before, after = PublishPolicy.from_settings(base), PublishPolicy.from_settings(changed)
    assert getattr(after, name) != getattr(before, name)
    want = getattr(changed, name)
    assert getattr(after, name) == (tuple(want) if isinstance(want, list) else want)
    assert after.fingerprint != before.fingerprint
