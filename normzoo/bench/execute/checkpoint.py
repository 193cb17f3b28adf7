"""A model trained outside normzoo: its checkpoint file, its architecture, its weights loaded.

``normzoo evaluate`` builds the model from a spec (``timm:<name>``, ``torchvision:<name>``, a
built-in backbone or ``package.module:factory``) with the norm it was trained with, loads a state
dict (``.pt``/``.pth``, ``.safetensors``, or a Lightning ``.ckpt`` whose ``state_dict`` keys carry
a prefix such as ``model.``), and swaps torch's batch norm layers for zoo ones (`normzoo.convert`,
buffers kept, eval outputs unchanged) so every test-time statistics mode applies. Every problem
is a ``ValueError``/``FileNotFoundError`` raised before any evaluation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

import normzoo
from normzoo.models import build_model

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt", ".bin")
_SHOWN_KEYS = 5  # mismatching keys listed per kind before "... and N more"


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` as a Path; FileNotFoundError naming it when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"checkpoint '{path}' {what}; pass a state dict file ({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a state dict saved by ``torch.save``, a
    ``.safetensors`` file, or a Lightning ``.ckpt`` (its ``state_dict``). Pickles are read with
    ``weights_only=True``: no code in the file runs."""
    path = check_checkpoint_file(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(
                f"'{path}' is a .safetensors file but the safetensors package is not installed;"
                " pip install safetensors"
            ) from None
        return load_file(str(path), device="cpu")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable pickle is one line for the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"checkpoint '{path}' cannot be read as a state dict ({first}); save "
            "model.state_dict() with torch.save, or a .safetensors file"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # Lightning's .ckpt
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"checkpoint '{path}' holds a {type(loaded).__name__}, not a state dict of tensors;"
            " save model.state_dict() (or a Lightning checkpoint)"
        )
    return dict(loaded)


def strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict, str]:
    """The state dict with the key prefix that matches most of ``expected`` removed (e.g.
    ``model.`` of a LightningModule holding the model as ``self.model``; ties: the shortest),
    keeping only keys under it; and the prefix (``""`` for a plain state dict)."""
    prefixes = {""}
    for key in state:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))

    def matched(prefix: str) -> int:
        return sum(k[len(prefix) :] in expected for k in state if k.startswith(prefix))

    best = max(sorted(prefixes, key=len), key=matched)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}, best


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> str:
    """Load ``state`` into ``model`` strictly (after `strip_prefix`); returns the prefix
    stripped. ValueError listing the missing, unexpected and wrongly shaped keys otherwise."""
    expected = model.state_dict()
    state, prefix = strip_prefix(state, set(expected))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} keys of another shape, file vs model ({_listed(shapes)})")
    if problems:
        stripped = f" after stripping the prefix '{prefix}'" if prefix else ""
        raise ValueError(
            f"{where} does not match the model{stripped}: {'; '.join(problems)}; check --model,"
            " --norm and --num-classes against how the checkpoint was trained"
        )
    model.load_state_dict(state, strict=True)
    return prefix


def build_checkpoint_model(
    spec: str, norm: str, num_classes: int, in_channels: int, norm_options: dict | None = None
) -> nn.Module:
    """The model of ``spec`` (any backbone form of `normzoo.models.build_model`: built-in,
    ``timm:``, ``torchvision:`` or ``package.module:factory``) with the norm it was trained with,
    random weights, nothing downloaded. ValueError (one line, naming the spec) when it does not
    build."""
    try:
        return build_model(spec, norm, num_classes, in_channels, norm_options)
    except ValueError as error:
        raise ValueError(f"--model {spec} does not build: {error}") from None
    except Exception as error:  # noqa: BLE001 - a user's factory may raise anything
        raise ValueError(
            f"--model {spec} does not build: {type(error).__name__}: {error}"
        ) from None


def to_zoo_batch_layers(model: nn.Module) -> int:
    """Replace, in place, each of torch's own batch norm layers by the zoo's (`normzoo.convert`,
    running statistics and affine parameters kept, so eval outputs are unchanged); other norm
    layers are batch-independent and stay. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            is_torch = not type(child).__module__.startswith("normzoo.")
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and is_torch:
                setattr(parent, name, normzoo.convert(child, "batch"))
                replaced += 1
    return replaced
