"""Wheel build hook: put the front-end assets and the sample data inside the package.

An installed wheel must be the whole product, with no source tree beside it. This hook adds
to a regular (not editable) wheel:

- ``heatmap/web/vendor/<package>/``: the folder ``servedAssets`` names for each npm package in
  ``package.json`` (Leaflet and its vector-tile plugin), with the package's licence file, and a
  copy of ``package.json`` (the app reads ``servedAssets`` from it at run time);
- ``heatmap/sample_data/``: the Shanghai places, outline and their sources (not the script that
  regenerates the outline).

The npm packages come from the registry at build time, never from the repository: when
``node_modules`` lacks one, ``npm ci`` installs them from ``package-lock.json`` (so a wheel built
from the sdist is the same as one built from a checkout). Editable installs read
``node_modules`` and ``sample_data`` in place and get nothing copied.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SAMPLE_SKIP = {".py"}
"""Suffixes of ``sample_data`` files that are tools, not data."""


class AssetsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Add the npm assets and the sample data to a regular wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Register the extra files (regular wheels only)."""
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        served = _served(root / "package.json")
        missing = [n for n, sub in served.items() if not (root / "node_modules" / n / sub).is_dir()]
        if missing:
            _npm_ci(root, {n: served[n] for n in missing})
        include: dict[str, str] = build_data["force_include"]
        for name, sub in served.items():
            folder = root / "node_modules" / name / sub
            include[str(folder)] = f"heatmap/web/vendor/{name}"
            for lic in sorted((root / "node_modules" / name).glob("LICEN[CS]E*")):
                if not lic.resolve().is_relative_to(folder.resolve()):  # else already in
                    include[str(lic)] = f"heatmap/web/vendor/{name}/{lic.name}"
        include[str(root / "package.json")] = "heatmap/web/vendor/package.json"
        for file in sorted((root / "sample_data").iterdir()):
            if file.is_file() and file.suffix not in SAMPLE_SKIP:
                include[str(file)] = f"heatmap/sample_data/{file.name}"


def _served(package_json: Path) -> dict[str, str]:
    """Return ``servedAssets`` (npm package -> folder) of ``package.json``."""
    try:
        table = json.loads(package_json.read_text(encoding="utf-8"))["servedAssets"]
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"{package_json}: no servedAssets table ({exc})") from exc
    if not isinstance(table, dict) or not table:
        raise RuntimeError(f"{package_json}: servedAssets must map npm packages to folders")
    return {str(k): str(v) for k, v in table.items()}


def _npm_ci(root: Path, missing: dict[str, str]) -> None:
    """Install the npm packages of ``package-lock.json`` (runtime ones only)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"building the wheel needs the npm packages {', '.join(missing)}: install npm "
            "(or run `npm ci` beside pyproject.toml first)"
        )
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
    if not (root / "node_modules").exists():
        cmd.append("--omit=dev")  # an unpacked sdist: the runtime packages are enough
    # (In a checkout, npm ci replaces node_modules: keep the dev packages the tests use.)
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError("npm ci failed while building the wheel:\n" + "\n".join(tail))
    still = [n for n, sub in missing.items() if not (root / "node_modules" / n / sub).is_dir()]
    if still:
        raise RuntimeError(f"npm ci did not install {', '.join(still)}")
