"""Every shell command in the README runs as written (so the README cannot drift from the CLI).

Commands that would train for minutes run with ``--dry-run`` appended (the whole config is still
validated and the grid planned); ``report DIR`` runs on a store made by a tiny real run; the
``make`` targets are checked with ``make -n`` (what they would run), since ``make test`` inside
the test suite would recurse. ``pip install .`` is covered by tests/test_packaging.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from normzoo.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# How each README command is run here: (prefix of the command's words, argv for normzoo.cli.main
# without the prefix, and the default command that prefix implies).
DOORS = {
    (".venv/bin/python", "benchmarks/compare.py"): "compare",
    (".venv/bin/python", "-m", "normzoo"): None,
    ("python", "benchmarks/compare.py"): "compare",
    ("python", "-m", "normzoo"): None,
    ("normzoo",): None,
}
SKIPPED = {("pip", "install")}  # tests/test_packaging.py builds and installs the wheel


def readme_commands() -> list[list[str]]:
    """The README's shell commands as word lists (comments and blank lines dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def split_door(words: list[str]) -> tuple[tuple[str, ...], list[str], str | None] | None:
    for door, default in DOORS.items():
        if tuple(words[: len(door)]) == door:
            return door, words[len(door) :], default
    return None


def test_the_readme_has_commands_and_every_one_is_known():
    commands = readme_commands()
    assert len(commands) >= 8
    unknown = [
        c
        for c in commands
        if c[0] != "make" and split_door(c) is None and tuple(c[:2]) not in SKIPPED
    ]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"


@pytest.mark.parametrize("target", ["compare", "test"])
def test_readme_make_targets_exist(target):
    assert any(c[:2] == ["make", target] for c in readme_commands())
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = "benchmarks/compare.py" if target == "compare" else "pytest"
    assert expected in result.stdout


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """An output dir with a real (tiny) run, for `report DIR`."""
    out = tmp_path_factory.mktemp("readme") / "quick"
    status = main(
        [
            "compare",
            "quick",
            "--out",
            str(out),
            "--wandb",
            "disabled",
            "--quiet",
            "--set",
            "norms=[batch, group]",
            "--set",
            "train.batch_sizes=[32]",
            "--set",
            "train.lr_grid=null",
            "--set",
            "train.tune_seeds=null",
            "--set",
            "train.max_steps=3",
            "--set",
            "train.seeds=2",
            "--set",
            "data.options.train_size=256",
            "--set",
            "eval.test_batch_sizes=[32]",
            "--set",
            "eval.shifts=[clean]",
            "--set",
            "eval.stats_modes=[running]",
            "--set",
            "eval.compositions=[iid]",
            "--workers",
            "1",
        ]
    )
    assert status == 0
    return out


def readme_factory_module() -> str:
    """The README's ``my_models.py`` block (recipe 2), as a user would save it."""
    blocks = re.findall(r"```python\n(# my_models\.py.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README should hold one python block starting '# my_models.py'"
    return blocks[0]


@pytest.fixture(scope="module")
def users_files(tmp_path_factory) -> Path:
    """A working directory holding what the README's "Bring your own" recipes name: an
    ImageFolder tree ``my_images/`` (PNG and JPEG files of mixed sizes, 3 classes), the README's
    ``my_models.py`` and a torchvision resnet18 state dict ``my_resnet18.pt`` (random weights,
    3 classes), plus ``configs/`` (a link to the repository's)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    work = tmp_path_factory.mktemp("user")
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("test", 22)):  # the example config batches 64
        for c, name in enumerate(("cat", "dog", "fox")):
            folder = work / "my_images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (36 + i, 40, 3)) + 60 * c
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.{suffix}")
    (work / "my_models.py").write_text(readme_factory_module())
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save(model.state_dict(), work / "my_resnet18.pt")
    return work


@pytest.mark.slow
@pytest.mark.parametrize(
    "words",
    [c for c in readme_commands() if split_door(c) is not None],
    ids=lambda words: " ".join(words)[:60],
)
def test_readme_command_runs(words, tiny_store, users_files, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(users_files)  # the repository's configs/ and the user's files
    monkeypatch.syspath_prepend(str(users_files))
    _, argv, default = split_door(words)
    command = argv[0] if argv and argv[0] in COMMANDS else default
    if command in (None, "compare") and "--version" not in argv:
        argv = [*argv, "--dry-run"]  # validate and plan; the real run takes minutes
    if command == "report":
        argv = ["report", str(tiny_store), *argv[2:]]
    try:
        status = main(argv, default_command=default)
    except SystemExit as stop:  # argparse's --version and --help exit
        status = stop.code or 0
    out = capsys.readouterr().out
    assert status == 0, f"{' '.join(words)} exited {status}:\n{out}"
