"""The ``normzoo`` command (console script and ``python -m normzoo``).

normzoo compare [CONFIG] [options]   # = python benchmarks/compare.py; CONFIG a path or preset name
normzoo report DIR                   # rebuild DIR's CSVs, report.md and plots from its store
normzoo presets                      # list the shipped presets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n", 1)[1]


def report(argv: list[str]) -> int:
    """Rebuild the report of every run in ``DIR/results.sqlite`` (no config needed)."""
    parser = argparse.ArgumentParser(
        prog="normzoo report",
        description="Rebuild CSVs, report.md and plots of an output dir from its results.sqlite.",
    )
    parser.add_argument("dir", help="output dir of a compare run (holds results.sqlite)")
    parser.add_argument(
        "--reference", default=None, help="norm to compare against (default: batch)"
    )
    args = parser.parse_args(argv)
    from normzoo.bench.cli import _rich_table, console
    from normzoo.bench.store import STORE_NAME, Store
    from normzoo.report import build_report

    out_dir = Path(args.dir)
    if not (out_dir / STORE_NAME).is_file():
        console.print(f"[red]error:[/] no {STORE_NAME} in '{out_dir}'; pass the --out dir of a run")
        return 2
    with Store(out_dir) as store:
        store.export_csv(out_dir)
        runs = store.runs_frame()
        evaluations = store.evaluations_frame()
    if evaluations.empty:
        console.print(f"[yellow]no finished runs in {out_dir / STORE_NAME}; nothing to report[/]")
        return 1
    norms = list(dict.fromkeys(evaluations["norm"]))
    reference = args.reference or ("batch" if "batch" in norms else norms[0])
    experiments = ", ".join(sorted(set(runs["experiment"])))
    result = build_report(
        runs,
        evaluations,
        out_dir,
        reference=reference,
        title=f"normzoo benchmark: {experiments}",
        command=" ".join(["normzoo", "report", *argv]),
    )
    console.print(_rich_table(result.headline.T.rename_axis("condition")))
    console.print(f"\nreport: {result.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``normzoo SUBCOMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "compare":
        from normzoo.bench.cli import main as compare

        return compare(rest, prog="normzoo compare")
    if command == "report":
        return report(rest)
    if command == "presets":
        from normzoo.bench.presets import presets

        print("\n".join(presets()))
        return 0
    if command in ("-h", "--help"):
        print(f"usage:\n{USAGE}")
        return 0
    print(f"usage:\n{USAGE}", file=sys.stderr)
    if command:
        print(f"unknown command '{command}'; use compare, report or presets", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
