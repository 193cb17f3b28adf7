"""benchmarks/layers.py --markdown: the perf report's structure (no timing is asserted)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

import normzoo

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_report_has_the_command_the_rows_and_the_renorm_target(tmp_path):
    layers = _benchmark("layers")
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
    # as is: holding malloc steady would change this test process for the tests after it
    argv += ["--allocator-as-is"]
    assert layers.main([*argv, "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "- Allocator: as is" in text
    assert "python benchmarks/layers.py --norms batch,batch_renorm,rms" in text
    assert "## Target: batch renorm within 1.15x of batch norm" in text
    assert "measured on a 2x8x2x2 input" in text
    # the kernels are built here: the report says the C++ step ran and times the Python path too
    assert "one C++ autograd function" in text
    assert "the pure-PyTorch path (`NORMZOO_CPP=0`, or no C++ compiler)" in text
    for norm in ("batch", "batch_renorm", "rms"):
        assert f"| train fwd+bwd | {norm} |" in text
    # the A/A row (torch's batch norm against itself) comes with batch renorm, and is read out
    assert f"| train fwd+bwd | {layers.AA} | torch BatchNorm2d |" in text
    assert "The A/A rows (torch's batch norm against itself" in text
    # both layouts by default with --markdown: one section per layout
    assert text.count("## shape 4,8,4,4,") == 2
    assert ("over 1.15x in" in text) or ("at or under 1.15x in every configuration" in text)
    assert "median target met" in text or "median target missed" in text


def test_steady_malloc_takes_effect_on_glibc():
    """mallopt is accepted (glibc): the heap is no longer trimmed, so freeing a large block
    and allocating it again costs no page faults. In a child process: it changes the process."""
    code = (
        "import resource, sys; sys.path.insert(0, 'benchmarks'); import layers, torch\n"
        "assert layers.steady_malloc()\n"
        "for _ in range(3): torch.empty(8 << 20).fill_(1.0)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): torch.empty(8 << 20).fill_(1.0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    # 20 fresh 32 MiB blocks would fault 20 x 8192 pages; a steady heap reuses its block (a
    # small allocation landing above it can make the heap grow past it once: 8192 faults, seen
    # in about one child in three)
    assert int(out.stdout.split()[-1]) < 3 * 8192, out.stdout


def test_renorm_gap_rows_and_kernels_match_the_layer(capsys):
    """benchmarks/renorm_gap.py: every row is printed, and the bare kernels it times compute
    batch renorm's gradient (as the layer does at step 0, where r = 1 and d = 0)."""
    gap = _benchmark("renorm_gap")
    gap.main(["--shape", "4,8,3,3", "--repeats", "1", "--min-time", "0.001", "--small-ops", "2"])
    out = capsys.readouterr().out
    for row in (
        "torch BatchNorm2d",
        "kernels only",
        "kernels + 2 small ops",
        "kernels in autograd.Function",
        "normzoo batch_renorm",
        "normzoo batch_renorm, NORMZOO_CPP=0",
    ):
        assert row in out
    x = torch.randn(4, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    layer = normzoo.create("batch_renorm", 8).double()
    layer(x).backward(dy)
    expected = x.grad.clone()
    x.grad = None
    mean, var = torch.batch_norm_update_stats(x.detach(), None, None, 0.0)
    invstd = (var + layer.eps).rsqrt()
    gap._Kernels.apply(x, layer.weight, layer.bias, mean, var, invstd, layer.eps).backward(dy)
    torch.testing.assert_close(x.grad, expected)


def test_overhead_report_has_the_aa_row_and_the_bare_lightning_step(tmp_path):
    """benchmarks/overhead.py runs its four sides (plain, plain again, bare Lightning, ours) and
    writes a table with the A/A noise floor and the bare Lightning step beside our ratio."""
    overhead = _benchmark("overhead")
    out = tmp_path / "overhead.md"
    argv = ["--steps", "3", "--warmup", "2", "--repeats", "1", "--write", str(out)]
    assert overhead.main(argv) == 0
    text = out.read_text()
    assert "| train batch size | plain torch (CPU ms/step) | A/A: plain vs plain |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [4, 32]  # the quick config's batch sizes
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert all(float(c) > 0 for c in (cells[1], cells[2], cells[3], cells[4], cells[5]))
    assert "Target ≤ 1.05×" in text
