"""Write the lock file, or the lowest allowed versions of the light dependencies.

python .ci/lock.py lock dev,cluster > requirements.lock   # what `make lock` runs
python .ci/lock.py lowest                                  # what `make check-lowest` installs

The lock is a fresh resolution of pyproject.toml by pip's own resolver (``pip install --dry-run
--ignore-installed --report``): the versions a new venv would get today, without installing them.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Dependencies small enough to install a second time for the lower-bound check. torch,
# torchvision, timm and lightning are not: their bounds are documented, not tested.
LIGHT = ("numpy", "scipy", "pandas", "matplotlib", "pyyaml", "rich", "wandb", "submitit")


def lock(extras: str) -> str:
    """``name==version`` of every package pip resolves for ``.[extras]``, normzoo excluded."""
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            "-",
            f"{ROOT}[{extras}]",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in json.loads(report)["install"]
    )
    lines = [
        "# Exact versions that `make` installs (then `pip install --no-deps -e .`).",
        f"# Resolved for .[{extras}] on {platform.system()} {platform.machine()},"
        f" CPython {platform.python_version()}. Regenerate: make lock",
    ]
    lines += [
        f"{name}=={version}"
        for name, version in sorted(pins, key=lambda p: p[0].lower())
        if name.lower() != "normzoo"
    ]
    return "\n".join(lines) + "\n"


def lowest() -> str:
    """``name==bound`` for the light dependencies' ``>=`` bounds in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
        if match and match.group(1).lower() in LIGHT:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    return "\n".join(pins) + "\n"


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "lock" and len(sys.argv) == 3:
        sys.stdout.write(lock(sys.argv[2]))
    elif command == "lowest":
        sys.stdout.write(lowest())
    else:
        sys.exit("usage: python .ci/lock.py lock EXTRAS | lowest")
