"""Config loading and validation: shipped configs pass --dry-run; all problems in one error."""

import json
from pathlib import Path

import pytest

from normzoo.bench.plan.config import apply_override, load_config, parse_config
from normzoo.bench.record.store import config_json

ROOT = Path(__file__).resolve().parents[3]
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


def _problems(raw) -> str:
    with pytest.raises(ValueError) as info:
        parse_config(raw)
    return str(info.value)


def test_norm_names_are_canonical_and_aliases_are_not_trained_twice(tiny_config_path):
    config = load_config(tiny_config_path, ["norms=[BN, Group-Norm, LN]"])
    assert [n.name for n in config.norms] == ["batch", "group", "layer"]
    with pytest.raises(ValueError) as info:
        load_config(tiny_config_path, ["norms=[bn, batch]"])
    message = str(info.value)
    assert "norms[1] 'batch' names the same layer as norms[0] 'bn' (both are 'batch')" in message
    # the same layer with different options is two methods, not a duplicate
    twice = load_config(
        tiny_config_path,
        ["norms=[{name: gn, options: {groups: 4}}, {name: group, options: {groups: 8}}]"],
    )
    assert [n.label for n in twice.norms] == ["group(groups=4)", "group(groups=8)"]


def test_primary_sides_are_canonical_like_norms_and_the_stored_config_reads_back(
    tiny_config_path,
):
    norms = "norms=[BN, {name: gn, options: {groups: 4}}, {name: Group-Norm, options: {groups: 8}}]"
    primary = "stats={primary: ['GN(groups=8) vs bn', 'gn(groups=4) vs group_norm(groups=8)']}"
    config = load_config(tiny_config_path, [norms, primary])
    assert config.stats.primary == (
        "group(groups=8) vs batch",
        "group(groups=4) vs group(groups=8)",
    )
    # the form stored with each run reads back to the same config (what `normzoo report` does)
    assert parse_config(json.loads(config_json(config.to_dict()))) == config
    # a name alone, of two norms with different options, names neither
    with pytest.raises(ValueError, match="'gn' names 2 norms of this config"):
        load_config(tiny_config_path, [norms, "stats={primary: [gn vs bn]}"])


def test_instance_norm_aliases_are_recognised(tiny_raw):
    tiny_raw["model"]["backbone"] = "mlp"
    for alias in ("instancenorm", "Instance-Norm", "in"):
        tiny_raw["norms"] = [alias]
        assert "instance norm needs spatial dims" in _problems(tiny_raw)


def test_data_options_are_checked_against_the_dataset_table(tiny_config_path):
    for override, expected in (
        ("data.options.trainsize=100", "unknown synthetic options ['trainsize']"),
        ("data.options.trainsize=100", "accepted: train_size, test_size, image_size"),
        ("data.options.image_size=7", "image_size=7 not allowed; use an integer >= 8"),
        ("data.options.difficulty=medium", "difficulty='medium' not allowed"),
    ):
        with pytest.raises(ValueError) as info:
            load_config(tiny_config_path, [override])
        assert expected in str(info.value), (override, str(info.value))


def test_numbers_as_people_write_them(tiny_config_path, tmp_path):
    config = load_config(tiny_config_path, ["train.lr=1e-3", "train.max_steps=3e4"])
    assert config.train.lr == 0.001 and config.train.max_steps == 30000
    assert isinstance(config.train.max_steps, int)
    path = tmp_path / "numbers.yaml"
    path.write_text(tiny_config_path.read_text() + "\n")
    path.write_text(path.read_text().replace("lr: 0.002", "lr: 2e-3"))
    assert load_config(path).train.lr == 0.002
    assert load_config(tiny_config_path, ["eval.mix_prior=.inf"]).eval.mix_prior == float("inf")
    assert load_config(tiny_config_path, ["eval.mix_prior=0"]).eval.mix_prior == 0


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=.nan", "train.lr=nan must be a number > 0"),
        ("train.lr=.inf", "train.lr=inf must be a number > 0"),
        ("eval.mix_prior=.nan", "eval.mix_prior=nan"),
        ("eval.tent_lr=-.inf", "eval.tent_lr=-inf"),
        ("train.max_steps=2.5", "train.max_steps=2.5 must be an integer >= 1"),
        ("train.lr=abc", "train.lr='abc' must be a number > 0"),
        ("norms=[]", "norms is empty"),
        ("train.batch_sizes=[]", "train.batch_sizes=[] must be a non-empty list"),
        ("eval.stats_modes=[]", "eval.stats_modes=[] must be a non-empty list"),
        ("eval.shifts=[]", "eval.shifts=[] must be a non-empty list"),
        ("eval.compositions=[]", "eval.compositions is empty"),
        ("train.seeds=0", "train.seeds=0 must be an integer >= 1"),
        ("norms=[{name: group, options: {groups: 8, eps: -1}}]", "norms[0] 'group(eps=-1"),
        ("norms=[{name: batch, options: {momentum: 5}}]", "norms[0] 'batch(momentum=5)'"),
        ("norms=[{name: batch, options: {mom: 0.1}}]", "unknown option(s) ['mom']"),
        ("experiment.name=" + "x" * 300, "must be a name of 1..100 printable characters"),
        ("train.compositions=[{name: classes, k: 3}]", "classes(k=3) needs train batch sizes"),
    ],
)
def test_bad_values_are_one_line_each(tiny_config_path, override, expected):
    with pytest.raises(ValueError) as info:
        load_config(tiny_config_path, [override])
    assert expected in str(info.value), str(info.value)


def test_experiment_name_with_nul_is_rejected(tiny_raw):
    tiny_raw["experiment"]["name"] = "a\0b"
    assert "experiment.name='a\\x00b' must be a name" in _problems(tiny_raw)


def test_yaml_syntax_errors_name_file_line_and_column(tiny_config_path, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("experiment:\n  name: x\ntrain:\n  lr: [1, 2\n")
    with pytest.raises(ValueError, match=r"broken\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ValueError, match=r"--set norms:1:\d+: invalid YAML"):
        load_config(tiny_config_path, ["norms=[batch, {name: group"])
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping of sections"):
        load_config(path)


def test_prior_and_composition_values(tiny_config_path):
    config = load_config(
        tiny_config_path, ["train.compositions=[iid, {name: classes, k: 4}]", "eval.mix_prior=64"]
    )
    assert [c.label for c in config.train.compositions] == ["iid", "classes(k=4)"]
    with pytest.raises(ValueError, match="classes per batch"):
        load_config(tiny_config_path, ["train.compositions=[{name: classes}]"])


def test_bad_configs_fail_in_the_cli_without_a_traceback(compare, tiny_config_path, capsys):
    for override in ("norms=[]", "norms=[{name: group, options: {groups: 8, eps: -1}}]"):
        code = compare.main([str(tiny_config_path), "--set", override, "--dry-run"])
        out = capsys.readouterr()
        assert code == 2 and "Traceback" not in out.out + out.err


def test_validation_and_config_do_not_import_each_other():
    """The rules know the config only by attribute names: no import cycle."""
    import ast

    import normzoo.bench.plan.config.validate as validate

    tree = ast.parse(Path(validate.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "normzoo.bench.plan.config" not in imported


def test_every_field_is_typed_and_described():
    """Each section field declares a description and accepted values the errors can name."""
    from pydantic import TypeAdapter

    from normzoo.bench.plan.config import SECTIONS
    from normzoo.bench.plan.config.fields import describe

    for name, cls in SECTIONS.items():
        schema = TypeAdapter(cls).json_schema()
        assert schema["additionalProperties"] is False, name  # unknown keys are rejected
        for key, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{key}"
            assert describe(prop), f"{name}.{key}"


def test_missing_dataset_files_stop_the_cli_before_training(compare, tiny_config_path, tmp_path):
    out = tmp_path / "out"
    code = compare.main(
        [
            str(tiny_config_path),
            "--set",
            "data={dataset: cifar10, root: " + str(tmp_path / "nothing") + "}",
            "--set",
            "norms=[batch]",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert not (out / "results.sqlite").exists()


def test_a_norm_can_be_restricted_to_some_train_batch_sizes(tiny_config_path):
    """Wu & He's decoupled arm: ghost batches only at the fixed optimization batch."""
    from normzoo.bench.plan.grid import expand_runs, grid_summary

    config = load_config(
        tiny_config_path,
        [
            "train.batch_sizes=[8, 16]",
            "norms=[batch, {name: ghost_batch, options: {virtual_batch_size: 4},"
            " train_batch_sizes: [16]}]",
        ],
    )
    runs = expand_runs(config)
    cells = sorted((r.norm.name, r.train_batch_size, r.seed) for r in runs)
    assert cells == sorted(
        [("batch", b, s) for b in (8, 16) for s in (0, 1)]
        + [("ghost_batch", 16, 0), ("ghost_batch", 16, 1)]
    )
    unrestricted = load_config(
        tiny_config_path,
        [
            "train.batch_sizes=[8, 16]",
            "norms=[batch, {name: ghost_batch, options: {virtual_batch_size: 4}}]",
        ],
    )
    summary = grid_summary(config)  # counts follow the runs, not norms x batch sizes
    assert summary["runs"] == 6
    assert (
        summary["evaluations_computed"]
        == 4 * summary["computed_per_batch_dependent_run"]
        + 2 * summary["computed_per_batch_dependent_run"]
    )
    # the restriction selects runs; it is not part of a run's key
    keys = {(r.norm.name, r.train_batch_size, r.seed): r.key for r in expand_runs(unrestricted)}
    assert all(keys[(r.norm.name, r.train_batch_size, r.seed)] == r.key for r in runs)
    with pytest.raises(ValueError, match=r"train_batch_sizes \[32\] are not in train.batch_sizes"):
        load_config(
            tiny_config_path,
            [
                "norms=[{name: ghost_batch, options: {virtual_batch_size: 4},"
                " train_batch_sizes: [32]}]"
            ],
        )


def test_nothing_is_downloaded_unless_asked(tiny_config_path):
    """Download is opt-in (tests/data/test_data_download.py tests it) and changes no result."""
    assert load_config(tiny_config_path).data.download is False
    on = load_config(tiny_config_path, ["data.download=true"])
    assert on.data.download is True and on.hash == load_config(tiny_config_path).hash
