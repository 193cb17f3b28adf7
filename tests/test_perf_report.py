"""benchmarks/layers.py --markdown: the perf report's structure (no timing is asserted)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "benchmarks" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_report_has_the_command_the_rows_and_the_renorm_target(tmp_path):
    layers = _layers()
    out = tmp_path / "perf.md"
    argv = [
        "--norms",
        "batch,batch_renorm,rms",
        "--shape",
        "4,8,4,4",
        "--threads",
        "1",
        "--groups",
        "4",
    ]
    argv += ["--modes", "train fwd+bwd", "--min-run", "0.002", "--repeats", "1"]
    assert layers.main([*argv, "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "python benchmarks/layers.py --norms batch,batch_renorm,rms" in text
    assert "## Target: batch renorm within 1.15x of batch norm" in text
    assert "measured on a 2x8x2x2 input" in text
    for norm in ("batch", "batch_renorm", "rms"):
        assert f"| train fwd+bwd | {norm} |" in text
    # both layouts by default with --markdown: one section per layout
    assert text.count("## shape 4,8,4,4,") == 2
    assert ("over 1.15x in" in text) or ("at or under 1.15x in every one" in text)
