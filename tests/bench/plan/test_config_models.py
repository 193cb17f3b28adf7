"""The typed config: specs and their labels, overrides that do what a user means, generated docs."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from normzoo.bench.plan.config import (
    SECTIONS,
    Composition,
    NormSpec,
    StatsMode,
    load_config,
    parse_config,
)
from normzoo.bench.plan.config.specs import spec_label
from normzoo.bench.plan.reference import (
    REFERENCE_PATH,
    SCHEMA_PATH,
    config_reference,
    config_schema,
)

ROOT = Path(__file__).resolve().parents[3]
QUICK = ROOT / "configs" / "quick.yaml"


def _problems(path, overrides) -> str:
    with pytest.raises(ValueError, match="invalid benchmark config") as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    "spec, label",
    [
        (NormSpec("group", {"groups": 8}), "group(groups=8)"),
        (
            NormSpec("batch_renorm", {"warmup": 20, "d_ramp": 80}),
            "batch_renorm(d_ramp=80,warmup=20)",
        ),
        (NormSpec("layer"), "layer"),
        (Composition(), "iid"),
        (Composition("label_skew", alpha=0.1), "label_skew(alpha=0.1)"),
        (Composition("outliers", k=2), "outliers(k=2)"),
        (StatsMode("running"), "running"),
        (StatsMode("mix", 16.0), "mix(prior=16)"),
        (StatsMode("mix", float("inf")), "mix(prior=inf)"),
    ],
)
def test_spec_labels_are_the_documented_strings(spec, label):
    assert spec.label == label


def test_one_label_function_sorts_parameters():
    assert spec_label("x", {}) == "x"
    assert spec_label("x", {"b": "2", "a": "1"}) == "x(a=1,b=2)"


def test_specs_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Composition().name = "label_skew"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="unknown stats mode 'runing'"):
        StatsMode("runing")
    with pytest.raises(ValidationError, match="only mix takes a prior"):
        StatsMode("batch", 4.0)


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "eval.compositions=[{name: iid, alpha: 0.1}]",
            "eval.compositions[0]: iid takes no parameters, not alpha; remove alpha",
        ),
        (
            "train.compositions=[{name: label_skew, alpha: 0.1, k: 2}]",
            "train.compositions[0]: label_skew takes alpha, not k; remove k",
        ),
        (
            "eval.compositions=[{name: outliers, k: 2, alpha: 1}]",
            "eval.compositions[0]: outliers takes k, not alpha; remove alpha",
        ),
        ("eval.compositions=[{name: label_skew}]", "label_skew needs alpha (Dirichlet"),
        ("eval.compositions=[{name: label_skew, alpha: -1}]", "alpha=-1.0 must be a number >= 0"),
        ("eval.compositions=[classes]", "unknown composition 'classes'"),
        ("eval.compositions=[{name: iid, alfa: 1}]", "(did you mean 'alpha'?)"),
        (
            "eval.compositions=[{name: label_skew, alpha: '0.5'}]",
            "eval.compositions[0].alpha='0.5' must be a number or null (label_skew: Dirichlet",
        ),
        ("train.compositions=[{name: classes, k: 2.5}]", "train.compositions[0].k=2.5 must be an"),
    ],
)
def test_composition_parameters_that_do_not_apply_are_rejected(
    tiny_config_path, override, expected
):
    assert expected in _problems(tiny_config_path, [override])


def test_every_problem_is_one_line_and_all_are_reported(tiny_raw):
    tiny_raw["train"].update(lr=0, optimizr="adam")
    tiny_raw["eval"]["severities"] = [9]
    tiny_raw["execution"]["wandb"] = "cloud"
    with pytest.raises(ValueError, match="invalid benchmark config") as info:
        parse_config(tiny_raw)
    message = str(info.value)
    lines = message.splitlines()[1:]
    assert len(lines) == 4 and all(line.startswith("  - ") for line in lines)
    assert "unknown key 'train.optimizr' (did you mean 'optimizer'?)" in message
    assert "eval.severities=[9] must be a non-empty list of values, each an integer in [1, 5]" in (
        message
    )
    assert "execution.wandb: unknown W&B mode 'cloud'; allowed: auto, offline" in message
    assert "train.lr=0 must be a number > 0" in message


def test_readme_override_of_the_quick_preset_validates_and_narrows_the_family(caplog):
    """README: ``normzoo compare quick --set 'norms=[batch, group]'``."""
    with caplog.at_level(logging.WARNING):
        config = load_config(QUICK, ["norms=[batch, group]"])
    assert [n.label for n in config.norms] == ["batch", "group(groups=8)"]  # the preset's groups
    assert config.stats.primary == ("group vs batch",)
    notes = caplog.text
    assert "keeps the config's options, group(groups=8)" in notes
    assert "stats.primary narrowed to the norms left by the override: dropped" in notes
    assert "'layer vs batch'" in notes and "removed norms: layer" in notes


def test_an_override_can_ask_for_a_norms_defaults_and_is_told_the_fix():
    message = _problems(QUICK, ["norms=[batch, 'group()']"])
    assert "group norm options that fit, e.g. 'group(groups=8)'" in message


def test_norm_labels_as_reports_print_them_are_accepted_back(tiny_config_path):
    config = load_config(
        tiny_config_path,
        ["norms=[bn, 'group(groups=4)', 'batch_renorm(warmup=20,eps=1e-3)']"],
    )
    assert [n.label for n in config.norms] == [
        "batch",
        "group(groups=4)",
        "batch_renorm(eps=0.001,warmup=20)",
    ]
    assert config.norms[1] == NormSpec("group", {"groups": 4})
    assert "options must read key=value" in _problems(tiny_config_path, ["norms=['gn(8)']"])


def test_a_rule_names_every_norm_of_the_grid(tiny_config_path):
    config = load_config(
        tiny_config_path, ["norms=[batch, layer, instance]", "stats={primary: ['* vs batch']}"]
    )
    assert config.stats.primary == ("layer vs batch", "instance vs batch")
    assert "at most one side" in _problems(tiny_config_path, ["stats={primary: ['* vs *']}"])


def test_a_removed_norm_narrows_the_family_but_a_typo_is_still_an_error():
    message = _problems(QUICK, ["norms=[batch, group]", "stats.primary=[layer vs bacth]"])
    assert "'bacth' is not a norm of this config" in message
    # a norm the file never had is not "removed": still an error
    assert "'rms' is not a norm" in _problems(QUICK, ["stats={primary: [rms vs batch]}"])


def test_a_backbone_change_drops_the_options_it_does_not_take(caplog):
    with caplog.at_level(logging.WARNING):
        # (N, C) features: batch statistics of one sample do not exist, so no test batch 1
        config = load_config(
            QUICK, ["model.backbone=mlp", "norms=[batch, layer]", "eval.test_batch_sizes=[128]"]
        )
    assert config.model.options == {}
    assert "model.options ['widths'] dropped: backbone 'mlp'" in caplog.text
    kept = load_config(QUICK, ["model.backbone=resnet_tiny", "norms=[batch]"])
    assert kept.model.options == {"widths": [16, 32, 64, 64]}  # resnet_tiny takes widths
    # options given with the new backbone are the user's: validated, never dropped
    assert "widths" in _problems(
        QUICK, ["model={backbone: mlp, options: {widths: [8]}}", "norms=[batch]"]
    )


def test_set_rejects_unknown_keys_of_every_section_with_a_suggestion(tiny_config_path):
    with pytest.raises(ValueError, match="unknown key 'stats.primry' \\(did you mean 'primary'"):
        load_config(tiny_config_path, ["stats.primry=[]"])


def test_models_reject_unknown_keys_and_bad_values_directly():
    with pytest.raises(ValidationError):
        SECTIONS["train"](lr=-1)
    with pytest.raises(ValidationError):
        SECTIONS["train"](epoch=3)  # type: ignore[call-arg]


def test_the_stored_config_reads_back(tiny_config_path):
    config = load_config(tiny_config_path, ["eval.mix_prior=[0, 16]"])
    assert parse_config(json.loads(json.dumps(config.to_dict()))) == config
    assert [m.label for m in config.eval.condition_modes] == [
        "running",
        "batch",
    ]


def test_committed_schema_and_reference_are_generated_from_the_models():
    """Regenerate with ``python -m normzoo.bench.plan.reference``."""
    assert json.loads((ROOT / SCHEMA_PATH).read_text()) == config_schema()
    assert (ROOT / REFERENCE_PATH).read_text() == config_reference()


def test_the_schema_and_reference_cover_every_key():
    schema, reference = config_schema(), config_reference()
    for name, cls in SECTIONS.items():
        section = schema["$defs"][cls.__name__]
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(section["properties"]) == keys and section["additionalProperties"] is False
        assert all(f"| `{key}` |" in reference for key in keys), name
    assert set(schema["properties"]) == {*SECTIONS, "norms", "stats"}
