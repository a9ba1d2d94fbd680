"""The declared dependencies: litellm releases reported compromised can never be installed with this package."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from tests.helpers import REPO

COMPROMISED_LITELLM = ("1.82.7", "1.82.8", "1.107.0")


def test_compromised_litellm_releases_are_excluded():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    litellm = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "litellm"]
    assert len(litellm) == 1
    for release in COMPROMISED_LITELLM:
        assert not litellm[0].specifier.contains(release), release
    assert version("litellm") not in COMPROMISED_LITELLM
