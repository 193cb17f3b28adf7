"""The ``normzoo`` command (console script and ``python -m normzoo``).

normzoo compare [CONFIG] [options]   # = python benchmarks/compare.py; CONFIG a path or preset name
normzoo report DIR                   # rebuild DIR's CSVs, report.md and plots from its store
normzoo presets                      # list the shipped presets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n", 1)[1]


def report(argv: list[str]) -> int:
    """Rebuild DIR's report from its store, with the config its runs were made with."""
    parser = argparse.ArgumentParser(
        prog="normzoo report",
        description="Rebuild CSVs, report.md and plots of an output dir from its results.sqlite"
        " (= normzoo compare CONFIG --out DIR --report-only, with the config stored in DIR).",
    )
    parser.add_argument("dir", help="output dir of a compare run (holds results.sqlite)")
    parser.add_argument(
        "--config",
        default=None,
        help="report the runs of this config (path or preset); default: the config of the"
        " run finished last in the store",
    )
    args = parser.parse_args(argv)
    from rich.markup import escape

    from normzoo import cli
    from normzoo.bench.plan.config import load_config, parse_config
    from normzoo.bench.plan.presets import resolve_config
    from normzoo.bench.record.store import STORE_NAME, Store
    from normzoo.bench.run import grid_runs

    out_dir = Path(args.dir)
    try:
        if not out_dir.exists():
            raise FileNotFoundError(f"'{out_dir}' does not exist; pass the --out dir of a run")
        if not out_dir.is_dir():
            raise FileNotFoundError(f"'{out_dir}' is not a directory; pass the --out dir of a run")
        if not (out_dir / STORE_NAME).is_file():
            raise FileNotFoundError(f"no {STORE_NAME} in '{out_dir}'; pass the --out dir of a run")
        with Store(out_dir) as store:
            runs = store.runs_frame()
        if runs.empty:
            raise ValueError(f"{out_dir / STORE_NAME} holds no runs; nothing to report")
        if args.config:
            config = load_config(resolve_config(args.config))
        else:
            latest = runs.sort_values("finished_at", na_position="first").iloc[-1]
            try:
                config = parse_config(json.loads(latest["config_json"]))
            except ValueError as error:
                raise ValueError(
                    f"the config stored with run {latest['run_key']} in {out_dir / STORE_NAME} "
                    f"cannot be read: {error}"
                ) from None
    except (ValueError, FileNotFoundError) as error:
        cli.console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        return 2
    with Store(out_dir, read_only=True) as store:  # tuned lrs: the compared runs' keys
        keys = [r.key for r in grid_runs(config, store)]
    cli._report(config, out_dir, keys, tracker=None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``normzoo SUBCOMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "compare":
        from normzoo.cli import main as compare

        return compare(rest, prog="normzoo compare")
    if command == "report":
        return report(rest)
    if command == "presets":
        from normzoo.bench.plan.presets import presets

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
