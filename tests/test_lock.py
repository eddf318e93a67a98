"""requirements/*.txt, the locked dependency sets: exact pins, each with its hashes, inside
pyproject.toml's ranges, and what `make setup` (so CI) installs. Offline: only files are read.
The Dockerfile's use of them is checked in tests/test_dockerfile.py."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# What each lock must cover: runtime (the image) the postgres extra too; dev (setup, CI)
# everything; build the build backend the other two build the project with.
LOCKS: dict[str, list[str]] = {
    "runtime": [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["postgres"]],
    "dev": [
        *PROJECT["dependencies"],
        *PROJECT["optional-dependencies"]["postgres"],
        *PROJECT["optional-dependencies"]["dev"],
        *PYPROJECT["build-system"]["requires"],
    ],
    "build": PYPROJECT["build-system"]["requires"],
}


def cpython_on(python: str, sys_platform: str = "linux", machine: str = "x86_64") -> dict[str, str]:
    """A marker environment: this machine's kind (3.11), the image's (3.12), a newer one."""
    system = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}[sys_platform]
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "nt" if sys_platform == "win32" else "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": system,
        "platform_version": "",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": sys_platform,
    }


TARGETS = {
    "cp311-linux-x86_64": cpython_on("3.11"),
    "cp312-linux-x86_64": cpython_on("3.12"),
    "cp313-linux-aarch64": cpython_on("3.13", machine="aarch64"),
}


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> Version:
        (spec,) = self.requirement.specifier
        return Version(spec.version)

    def applies(self, environment: dict[str, str]) -> bool:
        marker = self.requirement.marker
        return marker is None or marker.evaluate(environment)


@dataclass(frozen=True)
class Lock:
    pins: list[Pin]
    options: list[str]  # lines such as --index-url or -e: a lock here must have none

    def applying(self, environment: dict[str, str]) -> dict[str, Pin]:
        found: dict[str, Pin] = {}
        for pin in self.pins:
            if pin.applies(environment):
                assert pin.name not in found, f"{pin.name} pinned twice for one environment"
                found[pin.name] = pin
        return found


def read_lock(name: str) -> Lock:
    """The pins of requirements/<name>.txt: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REQS / f"{name}.txt").read_text())
    pins, options = [], []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        requirement, *hashes = line.split(" --hash=")
        pins.append(Pin(Requirement(requirement.strip()), tuple(h.strip() for h in hashes)))
    return Lock(pins, options)


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_pin_is_exact_and_carries_hashes(name: str) -> None:
    """Each requirement is `name==version` with sha256 hashes (what --require-hashes needs), and
    the file names no index, find-links or local path: this machine's pip reads a local
    mirror besides PyPI, which must not leak into a lock that others install from."""
    text = (REQS / f"{name}.txt").read_text()
    lock = read_lock(name)
    assert lock.pins and lock.options == []
    assert "://" not in text and "file:" not in text and "/opt/" not in text
    for pin in lock.pins:
        (spec,) = pin.requirement.specifier
        assert spec.operator == "==" and "*" not in spec.version, pin.requirement
        assert pin.requirement.url is None and not pin.requirement.extras, pin.requirement
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), (
            pin.requirement
        )


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_pins_every_pyproject_dependency_inside_its_range(name: str, target: str) -> None:
    """Every dependency pyproject.toml declares for that set (and that applies on the target)
    is pinned once, at a version its specifier allows; `psycopg[binary]` also pins the
    extra's package."""
    environment = TARGETS[target]
    pinned = read_lock(name).applying(environment)
    checked = 0
    for line in LOCKS[name]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        key = canonicalize_name(requirement.name)
        assert key in pinned, f"{requirement} is not pinned in {name}.txt for {target}"
        version = pinned[key].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}.txt pins {key}=={version}, outside {requirement}"
        )
        for extra in requirement.extras:
            assert canonicalize_name(f"{requirement.name}-{extra}") in pinned, requirement
        checked += 1
    assert checked


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", ["runtime", "build"])
def test_the_image_ships_the_versions_ci_tests(name: str, target: str) -> None:
    """runtime.txt and build.txt pin each package at the version dev.txt (what `make setup`
    and CI install) pins: the image is built from what the tests ran against."""
    environment = TARGETS[target]
    dev = read_lock("dev").applying(environment)
    pins = read_lock(name).applying(environment)
    assert pins
    assert {k: str(p.version) for k, p in pins.items()} == {
        k: str(dev[k].version) if k in dev else "not in dev.txt" for k in pins
    }


def test_build_in_is_the_build_system_requirement() -> None:
    """requirements/build.in, the input of build.txt, lists [build-system] requires exactly."""
    lines = [
        line
        for line in (REQS / "build.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(map(str, map(Requirement, lines))) == sorted(
        map(str, map(Requirement, PYPROJECT["build-system"]["requires"]))
    )


def make_rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe commands) of a Makefile rule, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    lines = text.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"{target}:")]
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return lines[start].split(":", 1)[1].split(), recipe


def test_make_setup_installs_the_dev_lock_with_hashes_then_the_project_alone() -> None:
    """`make setup` (which `make test` and `make lint`, so CI, go through) installs dev.txt
    with --require-hashes, then the project with --no-deps: nothing is resolved at install
    time. It runs again when the lock changes."""
    prerequisites, recipe = make_rule("$(STAMP)")
    assert "requirements/dev.txt" in prerequisites
    installs = [shlex.split(c) for c in recipe if " install " in c]
    assert installs[-2][-3:] == ["--require-hashes", "-r", "requirements/dev.txt"], installs
    project = installs[-1]
    assert project[-2:] == ["-e", "."] and {"--no-deps", "--no-build-isolation"} <= set(project)
    others = installs[:-2]
    assert all(c[-2:] == ["--upgrade", "pip"] for c in others), others


def test_make_lock_writes_every_lock_without_index_urls() -> None:
    """`make lock` writes all three files, from pyproject.toml, hashed, for every platform and
    CPython 3.11+, and never asks uv to write an index or find-links line into them."""
    _, recipe = make_rule("lock")
    text = (ROOT / "Makefile").read_text()
    flags = re.search(r"^LOCK_FLAGS := (.*(?:\\\n.*)*)", text, re.M)
    assert flags is not None
    assert {"--universal", "--generate-hashes"} <= set(flags.group(1).split())
    assert "--emit-index-url" not in text and "--emit-find-links" not in text
    outputs = [c.split(" -o ")[1].split()[0] for c in recipe]
    assert outputs == ["requirements/dev.txt", "requirements/runtime.txt", "requirements/build.txt"]
