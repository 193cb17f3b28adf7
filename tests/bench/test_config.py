"""Config loading and validation: shipped configs pass --dry-run; all problems in one error."""

from pathlib import Path

import pytest

from normzoo.bench.config import apply_override, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quick.yaml", "batch_size.yaml", "renorm.yaml", "shift.yaml", "cifar10c.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_passes_dry_run(path, compare, capsys, tmp_path):
    assert compare.main([str(path), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    config = load_config(path)
    assert f"{config.experiment.name}" in out and "estimated cost" in out
    assert not (tmp_path / "results.sqlite").exists()  # a dry run trains and writes nothing


def test_all_problems_are_reported_in_one_error(tiny_raw):
    raw = tiny_raw
    raw["train"]["epoch"] = 3  # typo
    raw["train"]["batch_sizes"] = [1, 16]  # 1 with batch norm
    raw["norms"] = ["batch", "batchnorm2", {"name": "group", "options": {"groups": 5}}]
    raw["eval"]["shifts"] = ["clean", "fogg"]
    raw["eval"]["test_batch_sizes"] = [1, 500]  # test set has 96 images
    raw["evals"] = {}
    with pytest.raises(ValueError) as info:
        parse_config(raw)
    message = str(info.value)
    for expected in (
        "unknown key 'train.epoch' (did you mean 'epochs'?)",
        "unknown key 'evals' (did you mean 'eval'?)",
        "unknown norm 'batchnorm2'",
        "unknown corruption 'fogg' (did you mean 'fog'?)",
        "train batch size 1 cannot train batch-dependent norm 'batch'",
        "group(groups=5)",
        "test batch size 500 is larger than the test set (96)",
    ):
        assert expected in message, f"missing: {expected}\n{message}"
    assert "6 problem(s)" in message or "7 problem(s)" in message


def test_impossible_combinations(tiny_raw):
    raw = tiny_raw
    raw["model"]["backbone"] = "mlp"
    raw["norms"] = ["instance", "layer"]
    raw["eval"]["compositions"] = [{"name": "outliers", "k": 40}]
    with pytest.raises(ValueError) as info:
        parse_config(raw)
    message = str(info.value)
    assert "instance norm needs spatial dims" in message
    assert "outliers(k=40) needs a test batch size > 40" in message
    assert "layer" not in message.split("instance norm")[0].split("\n")[-1]


def test_values_are_range_checked(tiny_raw):
    raw = tiny_raw
    raw["train"].update(lr=-1, optimizer="adam", schedule="linear", seeds=[0, 0])
    raw["eval"].update(severities=[6], stats_modes=["running", "batchnorm"])
    raw["execution"].update(wandb="cloud", workers=0)
    with pytest.raises(ValueError) as info:
        parse_config(raw)
    message = str(info.value)
    for expected in (
        "train.lr=-1",
        "unknown optimizer 'adam'",
        "unknown schedule 'linear'",
        "train.seeds=[0, 0]",
        "eval.severities=[6]",
        "unknown stats mode 'batchnorm'",
        "unknown W&B mode 'cloud'",
        "execution.workers=0",
    ):
        assert expected in message, expected


def test_set_overrides_are_dotted_and_yaml_parsed(tiny_config_path):
    config = load_config(
        tiny_config_path,
        [
            "train.epochs=3",
            "norms=[layer, instance]",
            "eval.mix_prior=8",
            "data.options.image_size=24",
        ],
    )
    assert config.train.epochs == 3
    assert [n.name for n in config.norms] == ["layer", "instance"]
    assert config.eval.mix_prior == 8 and config.data.options["image_size"] == 24
    assert config.train.seeds == (0, 1)  # a count expands to seeds 0..n-1
    mixed = load_config(tiny_config_path, ["eval.compositions=[iid, mixed_corruption]"])
    assert [c.name for c in mixed.eval.compositions] == ["iid", "mixed_corruption"]
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_config(tiny_config_path, ["train.epoch=3"])
    with pytest.raises(ValueError, match="key=value"):
        apply_override({}, "train.epochs")


def test_hash_covers_results_not_execution(tiny_config_path):
    base = load_config(tiny_config_path)
    assert load_config(tiny_config_path, ["execution.workers=2"]).hash == base.hash
    assert load_config(tiny_config_path, ["experiment.name=other"]).hash == base.hash
    assert load_config(tiny_config_path, ["train.lr=0.01"]).hash != base.hash
    assert load_config(tiny_config_path, ["eval.mix_prior=4"]).hash != base.hash


def test_missing_file_and_cli_exit_code(compare, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="quick.yaml"):
        load_config(Path(tmp_path) / "nope.yaml")
    assert compare.main([str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    assert (
        compare.main([str(ROOT / "configs" / "quick.yaml"), "--set", "train.lr=0", "--dry-run"])
        == 2
    )
    assert "train.lr=0" in capsys.readouterr().out
