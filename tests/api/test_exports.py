"""omniseq.api: the lazily imported names are all listed and all resolve."""

from __future__ import annotations

import importlib

import pytest

import omniseq.api as api


def test_all_lists_exactly_the_lazy_exports():
    assert sorted(api.__all__) == sorted(api._EXPORTS)


@pytest.mark.parametrize("name", sorted(api._EXPORTS))
def test_each_export_resolves_to_a_class_of_its_module(name):
    obj = getattr(api, name)
    assert obj is getattr(importlib.import_module(api._EXPORTS[name]), name)
    assert isinstance(obj, type)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        api.Nope  # noqa: B018
