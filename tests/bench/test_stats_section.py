"""The config's ``stats:`` section: parsing, validation before any run, shipped declarations."""

from pathlib import Path

import pytest

from normzoo.bench.config import load_config
from normzoo.bench.stats_section import Comparison, parse_comparison

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_parse_comparison():
    assert parse_comparison("group vs batch") == Comparison("group", "batch")
    c = parse_comparison("batch vs running where shift=fog|contrast and test_batch_size=128")
    assert c.where == (("shift", ("fog", "contrast")), ("test_batch_size", ("128",)))
    assert c.label == "batch vs running where shift=fog|contrast and test_batch_size=128"
    assert parse_comparison(c.label) == c


@pytest.mark.parametrize(
    "override, message",
    [
        ("stats={primary: [gn vs bn]}", "both sides must be norms of this config"),
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


@pytest.mark.parametrize("name", ["quick", "study_batch_size", "study_renorm", "study_shift"])
def test_shipped_configs_declare_their_primary_family(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.stats.primary and config.stats.alpha == 0.05
