"""Shipped experiment presets: ``configs/*.yaml``, resolvable by name from an installed wheel.

The repository's top-level ``configs/`` is the one copy; ``normzoo/configs`` is a symlink to
it, so the wheel carries the presets as package data and ``normzoo compare quick`` works from
anywhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PRESET_DIR = "configs"


def presets() -> list[str]:
    """Names of the shipped presets (``quick``, ``study_batch_size``, ...), sorted."""
    root = resources.files("normzoo") / PRESET_DIR
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config path as given if that file exists, else the shipped preset of that name.

    ``quick``, ``quick.yaml`` and ``configs/quick.yaml`` all name the preset when no such file
    exists relative to the working directory.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent in (Path("."), Path(PRESET_DIR)) and name in presets():
        with resources.as_file(resources.files("normzoo") / PRESET_DIR / f"{name}.yaml") as p:
            return Path(p)
    raise FileNotFoundError(
        f"config '{name_or_path}' is neither a file nor a shipped preset; presets: "
        f"{', '.join(presets()) or '(none installed)'}; or pass the path of a YAML file"
    )
