"""benchmarks/readme_figures.py: the README's make-compare block comes from a store."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from normzoo.bench.record.store import Store
from normzoo.report import headline_table, replace_between

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY = {
    "experiment": {"name": "tiny"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 256, "test_size": 64, "image_size": 16},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch", {"name": "group", "options": {"groups": 8}}],
    "train": {"batch_sizes": [16], "epochs": 1, "optimizer": "adamw", "lr": 2.0e-3, "seeds": 2},
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running"], "shifts": ["clean"]},
    "stats": {"primary": ["group vs batch"]},
    "execution": {"workers": 1, "wandb": "disabled"},
}


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location(
        "readme_figures", ROOT / "benchmarks" / "readme_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_has_one_generated_block(figures):
    readme = (ROOT / "README.md").read_text()
    assert readme.count(figures.BEGIN) == 1 and readme.count(figures.END) == 1
    assert readme.index(figures.BEGIN) < readme.index(figures.END)


def test_replace_block_keeps_the_rest(figures):
    text = f"before\n{figures.BEGIN}\nold\n{figures.END}\nafter\n"
    new = replace_between(text, figures.BEGIN, figures.END, f"{figures.BEGIN}\nnew\n{figures.END}")
    assert new == f"before\n{figures.BEGIN}\nnew\n{figures.END}\nafter\n"
    with pytest.raises(ValueError, match="no"):
        replace_between("no markers", figures.BEGIN, figures.END, "x")


def test_measure_then_render_writes_the_store_numbers(figures, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="--measure"):
        figures.render(config, out)
    record = figures.measure(config, out, ["--wandb", "disabled", "--workers", "1"])
    assert record["exit_status"] == 0 and record["wall_seconds"] > 0
    assert json.loads((out / figures.INVOCATION).read_text()) == record
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{figures.BEGIN}\nstale 0.999\n{figures.END}\nrest\n")
    assert figures.main(["--config", str(config), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale" not in text
    with Store(out, read_only=True) as store:
        runs, ev = store.runs_frame(), store.evaluations_frame()
    # every headline cell, computed independently from the store, is in the README block
    for cell in headline_table(ev).drop(columns="seeds").to_numpy().ravel():
        assert cell in text
    assert f"{len(runs)} of {len(runs)} runs ok" in text
    assert f"torch_version {runs['torch_version'].iloc[0]}" in text
    assert "group(groups=8) vs batch" in text or "group" in text.split("Findings")[1]
