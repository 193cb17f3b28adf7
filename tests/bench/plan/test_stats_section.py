"""The config's ``stats:`` section: parsing, validation before any run, shipped declarations."""

import json
from pathlib import Path

import pytest
import yaml

from normzoo.bench.plan.config import NormSpec, load_config
from normzoo.bench.plan.config.stats_section import Comparison, parse_comparison
from normzoo.bench.record.store import config_json
from normzoo.report.families import resolve_method

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_parse_comparison():
    assert parse_comparison("group vs batch") == Comparison("group", "batch")
    c = parse_comparison("batch vs running where shift=fog|contrast and test_batch_size=128")
    assert c.where == (("shift", ("fog", "contrast")), ("test_batch_size", ("128",)))
    assert c.label == "batch vs running where shift=fog|contrast and test_batch_size=128"
    assert parse_comparison(c.label) == c


@pytest.mark.parametrize(
    "override, message",
    [
        ("stats={primary: [gn vs rms]}", "'rms' is not a norm of this config; norms: ['batch',"),
        ("stats={primary: [gn vs rms]}", "both sides must be norms of this config"),
        ("stats={primary: ['gn(groups=4) vs bn']}", "(did you mean 'group(groups=8)'?)"),
        ("stats={primary: ['gn(groups) vs bn']}", "(did you mean 'group(groups=8)'?)"),
        (
            "stats={primary: [batch vs runing]}",
            "'runing' is not a norm of this config (did you mean 'running'?)",
        ),
        ("stats={primary: [gn vs Group-Norm]}", "compares 'group' with itself"),
        (
            "stats={primary: [gn vs bn, batch vs group]}",
            "'batch vs group' is the same comparison "
            "as 'gn vs bn' ('batch vs group'); list each comparison once",
        ),
        ("stats={primry: []}", "unknown key(s) ['primry']; accepted: ['primary'"),
        ("stats={alpha: 2}", "stats.alpha=2 must be a number in (0, 1)"),
        ("stats={equivalence_margin: -1}", "equivalence_margin=-1 must be a number > 0"),
        ("stats={primary: [group vs running]}", "or both stats modes"),
        ("stats={primary: [batch vs running where shft=1]}", "key one of ['train_batch_size'"),
        ("stats={primary: [batch vs running where shift=fgo]}", "accepted: ['clean'"),
        ("stats={primary: [group batch]}", "must read 'A vs B'"),
    ],
)
def test_bad_stats_sections_are_rejected_naming_the_accepted(override, message):
    with pytest.raises(ValueError, match="invalid benchmark config") as error:
        load_config(CONFIGS / "quick.yaml", [override])
    assert message in str(error.value)


def test_stats_section_does_not_change_run_keys():
    plain = load_config(CONFIGS / "quick.yaml", ["stats={}"])
    declared = load_config(CONFIGS / "quick.yaml", ["stats={primary: [layer vs batch]}"])
    assert plain.hash == declared.hash
    assert declared.stats.comparisons == (Comparison("layer", "batch"),)


@pytest.mark.parametrize(
    "name",
    ["quick", "study_batch_size", "study_renorm", "study_shift", "study_zoo", "study_zoo_long"],
)
def test_shipped_configs_declare_their_primary_family(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.stats.primary and config.stats.alpha == 0.05


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("gn vs bn", "group vs batch"),
        ("Group-Norm vs BatchNorm", "group vs batch"),
        (
            "group_norm vs batch_norm where train_batch_size=4",
            "group vs batch where train_batch_size=4",
        ),
        ("gn(groups=8) vs bn", "group(groups=8) vs batch"),
        ("GN( groups = 8 ) vs Layer-Norm", "group(groups=8) vs layer"),
        ("LN vs BN", "layer vs batch"),
        ("batch vs running", "batch vs running"),  # stats modes stay as written
        ("mix vs batch where test_batch_size=1", "mix vs batch where test_batch_size=1"),
    ],
)
def test_primary_sides_resolve_aliases_like_the_norms_section(written, canonical):
    plain = load_config(CONFIGS / "quick.yaml", ["stats={}"])
    config = load_config(CONFIGS / "quick.yaml", [f"stats={{primary: ['{written}']}}"])
    assert config.stats.primary == (canonical,)
    assert [c.label for c in config.stats.comparisons] == [canonical]
    stored = json.loads(config_json(config.to_dict()))  # what the store keeps with each run
    assert stored["stats"]["primary"] == [canonical]
    assert config.hash == plain.hash  # the stats section is not part of the run hash
    labels = [n.label for n in config.norms]
    modes = [m.label for m in config.eval.condition_modes]
    for side in (config.stats.comparisons[0].a, config.stats.comparisons[0].b):
        # every norm side is one the report finds in the data (its own name -> label lookup)
        assert side in modes or resolve_method(side, labels) is not None


def test_options_in_a_side_pick_the_norm_whose_label_they_name():
    norms = (
        "norms=[bn, ln, {name: gbn, options: {virtual_batch_size: 2}}, "
        "{name: ghost_batch, options: {virtual_batch_size: 8}}, "
        "{name: gn, options: {groups: 8, eps: 1.0e-3}}]"
    )
    with pytest.raises(ValueError) as error:
        load_config(CONFIGS / "study_batch_size.yaml", [norms, "stats={primary: [gbn vs bn]}"])
    assert (
        "'gbn' names 2 norms of this config ['ghost_batch(virtual_batch_size=2)', "
        "'ghost_batch(virtual_batch_size=8)']; name one by its label" in str(error.value)
    )
    config = load_config(
        CONFIGS / "study_batch_size.yaml",
        [
            norms,
            "stats={primary: ['Ghost-Batch(virtual_batch_size=8) vs gbn(virtual_batch_size=2)',"
            " ln vs bn, 'gn(eps=1e-3, groups=8) vs ln', 'gn vs bn']}",
        ],
    )
    assert config.stats.primary == (
        "ghost_batch(virtual_batch_size=8) vs ghost_batch(virtual_batch_size=2)",
        "layer vs batch",
        "group(eps=0.001,groups=8) vs layer",  # the value as the label writes it
        "group vs batch",  # a name alone: the one norm of that name
    )
    with pytest.raises(ValueError, match=r"'gbn\(virtual_batch_size=4\)' is not a norm"):
        load_config(
            CONFIGS / "study_batch_size.yaml",
            [norms, "stats={primary: ['gbn(virtual_batch_size=4) vs bn']}"],
        )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_keep_their_primary_family(path):
    """Shipped configs are written in canonical form: canonicalising changes none of them."""
    raw = yaml.safe_load(path.read_text())
    written = (raw.get("stats") or {}).get("primary", [])
    config = load_config(path)
    assert config.stats.primary == tuple(written)
    assert [c.label for c in config.stats.comparisons] == written
    assert [n.label for n in config.norms] == [
        n if isinstance(n, str) else NormSpec(n["name"], n.get("options") or {}).label
        for n in raw["norms"]
    ]
    assert config.hash == load_config(path, ["stats={}"]).hash
