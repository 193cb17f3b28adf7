"""normzoo's C++ kernels (``csrc/``), built on first use with torch's extension builder.

The build is keyed by a hash of the source, the compiler flags and the torch and Python
versions, so an edited source or an upgraded torch builds anew and a stale build is never
loaded. It lands in torch's extension directory (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); later processes import the built library directly. ``make``
builds it while setting up ``.venv`` (:func:`main`), so no run waits
for the compiler (about 30 s on 2 cores).

Where it cannot be built (no C++ compiler or ninja), a warning says why once per process and
callers use their pure-PyTorch path, which computes the same bits, only slower. The
environment variable ``NORMZOO_CPP=0`` skips the kernels (and the build) altogether.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCES = (Path(__file__).with_name("csrc") / "batch_renorm.cpp",)
# -ffp-contract=off: no fused multiply-add, so that the per-channel arithmetic rounds each
# operation as NumPy and torch's eager operators do (the paths must give the same bits)
CFLAGS = ("-O2", "-ffp-contract=off")

_loaded: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """Whether the C++ kernels may be used (``NORMZOO_CPP`` is not ``0``)."""
    return os.environ.get("NORMZOO_CPP", "1") != "0"


def module_name() -> str:
    """The build's name: the sources, flags and versions it depends on, hashed."""
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    for part in (*CFLAGS, torch.__version__, sys.version, sys.platform):
        digest.update(part.encode())
    return f"normzoo_cpp_{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _builder():
    """torch's extension builder, imported without its "No CUDA runtime is found" log line on
    a CPU-only machine (not news here: the kernels are CPU code that calls ATen)."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        yield cpp_extension
    finally:
        quiet.setLevel(level)


def build_root() -> str:
    """The directory that holds the builds: ``$TORCH_EXTENSIONS_DIR``, else a folder per Python
    and CUDA version in the user's cache directory (what ``TORCH_EXTENSIONS_DIR`` must be set
    to for another process to find them)."""
    with _builder() as cpp_extension:
        return str(Path(cpp_extension._get_build_directory(module_name(), verbose=False)).parent)


def _import_built(name: str, library: Path) -> ModuleType | None:
    if not library.exists():
        return None
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` package (a dependency) installs
    it beside the interpreter, which is not on PATH when a venv's python runs unactivated."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # the builder then says that ninja is missing
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _load(name: str) -> ModuleType:
    """Import the build of ``name``, building it first where it is missing."""
    with _builder() as cpp_extension:
        directory = Path(cpp_extension._get_build_directory(name, verbose=False))
        module = _import_built(name, directory / f"{name}.so")
        if module is not None:
            return module
        log.info("building normzoo's C++ kernels %s (once per source and torch version)", name)
        _ninja_on_path()
        return cpp_extension.load(
            name=name,
            sources=[str(s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            build_directory=str(directory),
            verbose=False,
        )


def kernels() -> ModuleType | None:
    """The built C++ module (building it on first use), or None where the kernels are off
    (``NORMZOO_CPP=0``) or cannot be built (warned once, with the reason)."""
    if not enabled():
        return None
    if "module" in _loaded:
        return _loaded["module"]
    name = module_name()
    module = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the builder's own compiler-version notes
            module = _load(name)
    except Exception as error:  # no compiler, no ninja, a failed build: the Python path
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[-1] if lines else ''}"
        warnings.warn(
            f"normzoo could not build its C++ kernels ({reason[:300]}); batch renorm uses its "
            f"pure-PyTorch path (the same results, 10-30% slower per layer call at small "
            f"shapes). Install a C++ compiler and ninja (pip install ninja) to build them, or "
            f"set NORMZOO_CPP=0 to skip the attempt",
            RuntimeWarning,
            stacklevel=2,
        )
    _loaded["module"] = module
    return module


def main() -> None:
    """make's set-up step: build the kernels now (a warning, not a failure, where they cannot
    be built: the Python path works everywhere)."""
    if not enabled():
        print("NORMZOO_CPP=0: normzoo's C++ kernels skipped")
        return
    built = kernels()
    print(f"normzoo's C++ kernels: {'ready' if built else 'not built (see the warning above)'}")
