"""The output dir is normzoo's alone to touch (issue 28.3): no write through a symbolic link,
`--fresh` deletes exactly what the manifest lists, every unusable `--out` refused with one line
and exit 2 before any training."""

from __future__ import annotations

import os

import pytest
import yaml

import normzoo.bench.record.outdir as outdir
from normzoo.bench.record.outdir import (
    CREATED_NAME,
    LOCK_NAME,
    OutDirError,
    OutDirLock,
    check_out_dir,
    claim,
    created,
    fresh,
)
from normzoo.bench.record.store import STORE_NAME
from tests.bench.test_eval_keys import GRID

SMALL = {**GRID, "eval": {**GRID["eval"], "stats_modes": ["running"], "shifts": ["clean"]}}
SMALL["eval"]["compositions"] = ["iid"]


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def _one_line_exit_2(compare, capsys, grid, out, *extra) -> str:
    status = compare.main([str(grid), "--out", str(out), *extra])
    printed = capsys.readouterr().out
    assert status == 2, printed
    assert "Traceback" not in printed and printed.count("error:") == 1, printed
    return " ".join(printed.split())


@pytest.mark.parametrize("name", [LOCK_NAME, CREATED_NAME])
def test_a_symlinked_lock_or_manifest_never_writes_outside(compare, capsys, grid, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious user data")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to("../victim.txt")
    printed = _one_line_exit_2(compare, capsys, grid, out)
    assert "symbolic link" in printed and name in printed
    assert victim.read_text() == "precious user data"
    assert not (out / STORE_NAME).exists()  # refused before anything ran
    # the lock and the manifest themselves refuse links, whoever calls them
    if name == LOCK_NAME:
        with pytest.raises(OutDirError, match="symbolic link"):
            OutDirLock(out).acquire()
    else:
        with pytest.raises(OutDirError, match="symbolic link"):
            claim(out, ["results.sqlite"])
        assert created(out) == set()
    assert victim.read_text() == "precious user data"


def test_fresh_deletes_exactly_the_manifest(compare, capsys, grid, tmp_path):
    out = tmp_path / "out"
    user = {
        out / "checkpoints" / "my_model.ckpt": b"user checkpoint",
        out / "weights" / "pretrained.pt": b"user weights",
        out / "notes.txt": b"notes",
    }
    for path, data in user.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert compare.main([str(grid), "--out", str(out)]) == 0
    ours = sorted(p.name for p in (out / "weights").glob("*.safetensors"))
    assert len(ours) == 1 and (out / STORE_NAME).exists()
    listed = created(out)
    assert "weights" not in listed and "checkpoints" not in listed  # the user's folders
    assert f"weights/{ours[0]}" in listed
    capsys.readouterr()
    assert compare.main([str(grid), "--out", str(out), "--fresh"]) == 0
    assert "--fresh: deleted" in capsys.readouterr().out
    for path, data in user.items():
        assert path.read_bytes() == data
    # the rerun after --fresh trained again from nothing: its own files are back, claimed
    assert (out / "weights" / ours[0]).exists()
    assert fresh(out) and not (out / "weights" / ours[0]).exists()
    assert not (out / STORE_NAME).exists()
    for path, data in user.items():
        assert path.read_bytes() == data


def test_fresh_removes_a_folder_it_created_only_when_empty_and_never_follows_links(tmp_path):
    out = tmp_path / "out"
    (out / "weights").mkdir(parents=True)
    (out / "weights" / "a.safetensors").write_bytes(b"x")
    (out / "weights" / "later_user_file.pt").write_bytes(b"u")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.ckpt").write_bytes(b"keep")
    (out / "checkpoints").symlink_to(elsewhere)
    (out / CREATED_NAME).write_text(
        "weights\nweights/a.safetensors\ncheckpoints/b.ckpt\n../escape\nweights/../../x\n"
    )
    deleted = fresh(out)
    assert deleted == ["weights/a.safetensors"]
    assert (out / "weights" / "later_user_file.pt").exists()
    assert (elsewhere / "b.ckpt").read_bytes() == b"keep"


def _unusable(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with_file = tmp_path / "with_file"
    with_file.mkdir()
    (with_file / "weights").write_text("not a folder")
    with_link = tmp_path / "with_link"
    with_link.mkdir()
    (with_link / "checkpoints").symlink_to(tmp_path / "nowhere")
    return {
        loop: "leads nowhere",
        dangling: "leads nowhere",
        with_file: "'weights' must be a folder",
        with_link: "'checkpoints' must be a folder",
    }


def test_unusable_out_dirs_are_refused_before_training(compare, capsys, grid, tmp_path):
    for out, message in _unusable(tmp_path).items():
        printed = _one_line_exit_2(compare, capsys, grid, out)
        assert message in printed, printed
        assert not os.path.lexists(out / STORE_NAME) if out.is_dir() else True


def test_a_full_disk_is_refused_before_training(compare, capsys, grid, tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "_free_bytes", lambda path: 4096)
    printed = _one_line_exit_2(compare, capsys, grid, tmp_path / "out")
    assert "no space left" in printed
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_is_refused_before_training(compare, capsys, grid, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=2m tmpfs '{mount}' 2>/dev/null") != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        printed = _one_line_exit_2(compare, capsys, grid, mount / "out")
        assert "no space left" in printed
    finally:
        os.system(f"umount '{mount}'")


def test_check_out_dir_creates_nothing(tmp_path):
    check_out_dir(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
