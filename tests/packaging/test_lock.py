"""The lock files match ``pyproject.toml``: every dependency is pinned, at a version its range
allows, with hashes, and the dev lock keeps the runtime pins (``make lock`` writes both)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\;]+)")


def pins(lock: Path) -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = Version(m.group(2))
    return out


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    raw = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(r) for r in raw]


def check(reqs: list[Requirement], locked: dict[str, Version]) -> list[str]:
    problems = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate():
            continue
        if name not in locked:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req.name}=={locked[name]} is outside {req.specifier}")
    return problems


def test_runtime_lock_covers_the_dependencies() -> None:
    assert check(requirements(), pins(ROOT / "requirements.lock")) == [], "run `make lock`"


def test_dev_lock_covers_runtime_and_dev_and_keeps_runtime_pins() -> None:
    dev, run = pins(ROOT / "requirements-dev.lock"), pins(ROOT / "requirements.lock")
    assert check(requirements() + requirements("dev"), dev) == [], "run `make lock`"
    differ = {n: (v, dev.get(n)) for n, v in run.items() if dev.get(n) != v}
    assert differ == {}


def test_every_pin_has_a_hash() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]}"


def test_check_finds_a_missing_or_stale_pin() -> None:
    # The control of the tests above.
    locked = {"h3": Version("4.0.0")}
    assert check([Requirement("h3>=4.1"), Requirement("numpy")], locked) == [
        "h3==4.0.0 is outside >=4.1",
        "numpy is not in the lock",
    ]


def test_the_lock_is_for_this_python() -> None:
    header = (ROOT / "Makefile").read_text(encoding="utf-8")
    locked_for = re.search(r"LOCK_PYTHON \?= (\d+\.\d+)", header)
    assert locked_for is not None
    assert locked_for.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
