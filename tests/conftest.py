"""Every test runs in an empty current folder: commands read ./params.yaml for the flags they are not
given (pipeline/defaults.py), so the repository's own params.yaml must not leak into the tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
