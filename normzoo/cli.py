"""The compare CLI: config -> runs -> store -> statistics -> report (+ W&B).

``main(argv) -> int`` is the whole command; ``benchmarks/compare.py`` (the documented entry
point), the ``normzoo compare`` console script and ``python -m normzoo`` all call it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

DEFAULT_CONFIG = "quick"  # a shipped preset (configs/quick.yaml), see normzoo.bench.plan.presets
console = Console()
if not console.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
    console = Console(width=160)
log = logging.getLogger("normzoo.compare")

EXIT_STATUSES = """exit status:
  0    every run of the grid finished ok and is fully evaluated
  1    some runs failed or diverged (the summary names them; rerun with --retry-failed)
  2    invalid config, or an unusable output dir (not a dir, not writable, a store that is
       damaged, foreign or of an older normzoo, or in use by another invocation)
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: finished work is stored; rerunning the
       same command resumes
"""


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from normzoo.bench.plan.schema import WANDB_MODES

    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        description="Train every (norm, train batch size, composition, seed) of an experiment"
        " config, evaluate each trained model under every test condition, store the results in"
        " <out>/results.sqlite, log to W&B and print the headline table. Rerunning resumes.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=str(DEFAULT_CONFIG),
        help="experiment YAML, or the name of a shipped preset such as quick or"
        " study_batch_size (default: quick = configs/quick.yaml)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, dotted key and YAML value, e.g."
        " --set train.epochs=3 --set 'norms=[batch,group]' (repeatable)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output dir for results.sqlite, CSVs, report and wandb/"
        " (default: runs/<experiment name>)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel worker processes, one torch thread each"
        " (default: execution.workers, else the number of CPU cores)",
    )
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default=None,
        help="W&B mode (default: execution.wandb = auto: online when logged in,"
        " else offline files under <out>/wandb)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, print the grid and the estimated cost; train nothing",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch a missing real dataset (CIFAR-10, MNIST, CIFAR-10-C; checksum-verified) before"
        " training (= --set data.download=true); never done otherwise",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete what normzoo created in the output dir (store, weights, CSVs, report, the"
        " wandb/ it made) and start over; refused while another invocation uses the dir",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; rebuild CSVs, report and headline table from the store",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another invocation holds the output dir, wait for it instead of exiting",
    )
    parser.add_argument(
        "--workers-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="on a GPU machine the default is N workers per visible GPU (round-robin; default 1)",
    )
    parser.add_argument(
        "--rerun-other-versions",
        action="store_true",
        help="retrain stored runs that other normzoo/torch/lightning/timm versions produced"
        " (by default they are kept, and a warning lists the versions mixed)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun runs recorded as failed or diverged (by default they are kept and not retried)",
    )
    return parser.parse_args(argv)


def _load(args: argparse.Namespace):
    from normzoo.bench.plan.config import load_config
    from normzoo.bench.plan.presets import resolve_config

    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"execution.workers={args.workers}")
    if args.wandb is not None:
        overrides.append(f"execution.wandb={args.wandb}")
    if args.download:
        overrides.append("data.download=true")
    return load_config(resolve_config(args.config), overrides)


def _print_grid(config, out_dir: Path, workers: int, dry_run: bool) -> None:
    from normzoo.bench.plan.cost import estimate_seconds
    from normzoo.bench.plan.grid import expand_conditions, expand_runs, grid_summary

    counts = grid_summary(config)
    restricted = any(n.train_batch_sizes for n in config.norms)
    cost = estimate_seconds(config, workers)
    console.print(
        f"[bold]{config.experiment.name}[/] (config hash {config.hash}) -> {out_dir}\n"
        f"  {counts['runs']} runs = {len(config.norms)} norms x {len(config.train.batch_sizes)}"
        f" train batch sizes x {len(config.train.compositions)} compositions x"
        f" {len(config.train.seeds)} seeds"
        f"{' (less: some norms run only at some batch sizes)' if restricted else ''}\n"
        f"  {counts['conditions_per_run']} test conditions per run ->"
        f" {counts['evaluations_recorded']} evaluation rows, {counts['evaluations_computed']}"
        " computed (identical computations run once)\n"
        f"  estimated cost on this machine: ~{_duration(cost['wall_seconds'])}"
        f" with {workers} workers"
        f" (train {cost['train_seconds']:.0f} s + eval {cost['eval_seconds']:.0f} s of CPU time;"
        " rough, from timed steps of the backbone)"
    )
    if dry_run:
        table = Table(title="runs")
        for column in ("run", "key", "norm", "train bs", "composition", "seed"):
            table.add_column(column)
        for run in expand_runs(config):
            table.add_row(
                run.name,
                run.key,
                run.norm.label,
                str(run.train_batch_size),
                run.train_composition.label,
                str(run.seed),
            )
        console.print(table)
        labels = sorted({c.label for c in expand_conditions(config)})
        console.print(f"test conditions ({len(labels)}): " + ", ".join(labels))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rich_table(frame):
    """A DataFrame as a rich Table (wraps long column names instead of the whole table)."""
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column(str(frame.index.name or ""), style="bold", no_wrap=True)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *(str(v) for v in row))
    return table


def _report(config, out_dir: Path, run_keys: list[str], tracker) -> None:
    from normzoo.bench.record.store import Store

    with Store(out_dir) as store:
        csvs = store.export_csv(out_dir, run_keys)
        runs = store.runs_frame(run_keys)
        evaluations = store.evaluations_frame(run_keys)
    console.print(f"results: {out_dir / 'results.sqlite'} ({', '.join(p.name for p in csvs)})")
    excluded = runs[runs["status"] != "ok"]
    if len(excluded):
        console.print(
            f"[yellow]{len(excluded)} run(s) excluded from statistics[/]: "
            + ", ".join(f"{s}={n}" for s, n in excluded["status"].value_counts().items())
        )
    if evaluations.empty:
        with Store(out_dir) as store:
            others = len(store.runs_frame()) - len(runs)
        hint = f" ({others} runs of other configs are in the store)" if others > 0 else ""
        console.print(f"[yellow]no finished runs of this config yet{hint}; nothing to report[/]")
        return
    from normzoo.report import build_report

    names = [n.name for n in config.norms]
    reference = "batch" if "batch" in names else config.norms[0].label
    command = " ".join(["python", *sys.argv]) if sys.argv else None
    report = build_report(
        runs,
        evaluations,
        out_dir,
        reference=reference,
        title=f"normzoo benchmark: {config.experiment.name}",
        command=command,
        stats=getattr(config, "stats", None),
    )
    console.print("\n[bold]headline[/] (accuracy, mean ± 95% CI half-width over seeds)")
    console.print(_rich_table(report.headline.T.rename_axis("condition")))
    console.print(f"\nreport: {report.path}")
    if tracker is not None and tracker.enabled:
        tables = {k: v for k, v in report.tables.items() if not v.empty}
        figures = list(report.figures.values())
        exports = {p.name for p in csvs}
        report_csvs = [p for p in sorted(report.path.parent.glob("*.csv")) if p.name not in exports]
        try:
            url = tracker.log_summary(
                config,
                tables,
                figures,
                store_path=out_dir / "results.sqlite",
                report_files=[report.path, *figures, *report_csvs],
                counts=runs["status"].value_counts().to_dict(),
            )
        except Exception as error:  # W&B trouble never costs the report or the exit status
            log.warning("W&B summary run failed (%s: %s)", type(error).__name__, error)
            url = None
        if url:
            console.print(f"W&B summary run: {url}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the compare command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (see `EXIT_STATUSES`).

    ``prog`` is the command name shown in ``--help`` (default: from ``sys.argv[0]``).
    """
    args = parse_args(argv, prog)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        return _main(args)
    except KeyboardInterrupt:  # Ctrl-C before the grid's own handling (loading, validating)
        console.print("[yellow]interrupted by SIGINT before any run started[/]")
        return 130


def _main(args: argparse.Namespace) -> int:
    from normzoo.bench.record.outdir import OutDirLock, check_out_dir
    from normzoo.bench.run import Interrupted, interrupt_on_signals

    try:
        config = _load(args)
        out_dir = Path(args.out) if args.out else Path("runs") / config.experiment.name
        try:
            check_out_dir(out_dir, store=not args.fresh)
        except OSError as error:  # e.g. a name too long for the file system
            raise ValueError(f"--out {out_dir}: {error.strerror or error}") from error
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    if args.dry_run:
        _print_grid(config, out_dir, _workers(config, args), dry_run=True)
        _print_plan(config, out_dir, args)
        return 0
    try:
        with interrupt_on_signals(), OutDirLock(out_dir, wait=args.wait):
            return _invoke(config, out_dir, args)
    except Interrupted as interrupt:
        console.print(f"[yellow]{_interrupted_line(interrupt)}[/]")
        return interrupt.exit_status
    except ValueError as error:  # the output dir is locked, its store unusable, data missing
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 2


def _workers(config, args) -> int:
    from normzoo.bench.run import default_workers

    return config.execution.workers or default_workers(workers_per_gpu=args.workers_per_gpu)


def _print_plan(config, out_dir: Path, args) -> None:
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import plan_grid

    if args.fresh:
        console.print("--fresh would delete what normzoo created in the output dir first")
        return
    with Store(out_dir, read_only=True) as store:
        plan = plan_grid(config, out_dir, store, args.retry_failed, args.rerun_other_versions)
    console.print(plan.line())


def _invoke(config, out_dir: Path, args) -> int:
    """The work under the output dir's lock: fresh, grid, report; returns the exit status."""
    from normzoo.bench.plan.validate import check_files, download_missing
    from normzoo.bench.record.outdir import claim, fresh, listing
    from normzoo.bench.record.store import Store, check_store
    from normzoo.bench.record.track import Tracker
    from normzoo.bench.run import grid_runs, grid_status, run_grid

    if args.fresh:
        deleted = fresh(out_dir)
        console.print(f"--fresh: deleted {', '.join(deleted) if deleted else 'nothing'}")
    check_store(out_dir / "results.sqlite")
    workers = _workers(config, args)
    _print_grid(config, out_dir, workers, dry_run=False)
    try:
        download_missing(config)  # only with data.download: true
    except (OSError, RuntimeError) as error:
        raise ValueError(f"download failed: {error}") from None
    missing = check_files(config)  # before any training: every run would fail without them
    if missing:
        raise ValueError("\n".join(missing))
    before = listing(out_dir)
    tracker = Tracker.from_config(config, out_dir)
    if tracker.enabled and tracker.root == out_dir and "wandb" not in before:
        claim(out_dir, ["wandb"])
    project = f", project {tracker.project}" if tracker.enabled else ""
    console.print(f"W&B mode: {tracker.mode}{project}")
    if tracker.mode == "online":
        console.print(f"W&B project: {tracker.project_url()}")
    if args.report_only:
        summary = grid_status(config, out_dir)
    else:
        summary = run_grid(
            config,
            out_dir,
            workers,
            tracker,
            retry_failed=args.retry_failed,
            show_progress=console.is_terminal,
            rerun_other_versions=args.rerun_other_versions,
            workers_per_gpu=args.workers_per_gpu,
        )
        console.print(f"[bold]summary:[/] {summary.line()}")
    for line in summary.errors:
        console.print(f"  [red]{line}[/]")
    if len(summary.versions) > 1:
        console.print(
            f"[yellow]warning:[/] the stored runs of this grid come from {len(summary.versions)}"
            " different code/library versions (normzoo, git SHA, torch, lightning, timm):"
            f" {'; '.join(' '.join(map(str, v)) for v in summary.versions)};"
            " --rerun-other-versions retrains the ones not made by this version"
        )
    status = summary.exit_status
    try:
        with Store(out_dir, read_only=True) as store:  # tuned lrs: the compared runs' keys
            keys = [r.key for r in grid_runs(config, store)]
        _report(config, out_dir, keys, tracker)
    except Exception as error:  # noqa: BLE001 - the stored results stay valid; say what failed
        log.debug("report failed", exc_info=True)
        console.print(f"[red]report failed:[/] {type(error).__name__}: {error}")
        status = max(status, 1)
    claim(out_dir, listing(out_dir) - before)
    if tracker.mode == "offline":
        console.print(f"W&B offline runs: wandb sync {tracker.root}/wandb/offline-run-*")
    if status == 1:
        console.print(
            f"exit status 1: {len(summary.errors)} run(s) failed or diverged"
            + (
                f", {summary.pending_evaluations} evaluations missing"
                if summary.pending_evaluations
                else ""
            )
        )
    return status


def _interrupted_line(interrupt) -> str:
    summary = interrupt.summary
    name = signal_name(interrupt.signum)
    if summary is None:
        return (
            f"interrupted by {name} outside the grid; the store holds every finished run;"
            " rerun the same command to resume"
        )
    stored = summary.total - summary.not_finished
    return (
        f"interrupted by {name}: {stored} of {summary.total} runs are in the store"
        f" ({len(summary.outcomes)} finished in this invocation); runs in progress were abandoned,"
        " nothing half-written. Rerun the same command to resume."
    )


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


if __name__ == "__main__":
    sys.exit(main())
