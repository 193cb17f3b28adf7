"""The ``normzoo`` command: one parser with a subcommand per job.

normzoo compare [CONFIG] [options]   # config -> runs -> store -> statistics -> report (+ W&B)
normzoo evaluate CHECKPOINT --model SPEC --data NAME  # a model trained elsewhere, at test time
normzoo report DIR                   # rebuild DIR's CSVs, report.md and plots from its store
normzoo presets [list | show NAME]   # the shipped presets; show prints one's YAML
normzoo dashboard ENTITY/PROJECT     # save the W&B Report (standard panels) of an experiment
normzoo sweep [CONFIG] [--out FILE]  # a W&B sweep file over the config's learning-rate grid
normzoo --version

``main(argv) -> int`` is the whole command. The console script ``normzoo``, ``python -m normzoo``
and ``python benchmarks/compare.py`` (where no subcommand means ``compare``) are thin doors to it.
The package's heavy modules (torch, Lightning, the engine) are imported inside the commands so
that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

import normzoo

DEFAULT_CONFIG = "quick"  # a shipped preset (configs/quick.yaml), see normzoo.bench.plan.presets
console = Console()
if not console.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
    console = Console(width=160)
log = logging.getLogger("normzoo.compare")
_quiet = False  # --quiet: only warnings, errors and the final summary (set per invocation)

EXIT_STATUSES = """exit status:
  0    every run of the grid finished ok and is fully evaluated
  1    some runs failed or diverged (the summary names them; rerun with --retry-failed)
  2    invalid config, W&B online without a login, or an unusable output dir (not a dir, not
       writable, a store that is damaged, foreign or of an older normzoo, or in use by another
       invocation)
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: finished work is stored; rerunning the
       same command resumes
"""


def _info(*objects, **kwargs) -> None:
    """Console output that ``--quiet`` drops."""
    if not _quiet:
        console.print(*objects, **kwargs)


def _error(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


# ---- the parser ------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The whole command line: one subparser per command, each with its own ``--help``."""
    parser = argparse.ArgumentParser(
        prog=prog or "normzoo",
        description="normzoo: compare normalization layers under controlled conditions.",
    )
    parser.add_argument("--version", action="version", version=f"normzoo {normzoo.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _compare_arguments(
        commands.add_parser(
            "compare",
            help="train and evaluate an experiment's grid, store, report (+ W&B)",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=EXIT_STATUSES,
            description="Train every (norm, train batch size, composition, seed) of an experiment"
            " config, evaluate each trained model under every test condition, store the results"
            " in <out>/results.sqlite, log to W&B and print the headline table. Rerunning"
            " resumes.",
        )
    )
    _evaluate_arguments(
        commands.add_parser(
            "evaluate",
            help="test-time analysis of a model trained elsewhere (nothing retrained)",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=EVALUATE_EXIT_STATUSES,
            description="Load a checkpoint into its model and evaluate it over a grid of test"
            " conditions (test batch sizes, stats modes, mix priors, PreciseBN/AdaBN, TENT,"
            " shifts x severities, label-skewed and outlier batches) with cluster-bootstrap"
            " intervals over the test set; writes report.md, evaluate.csv and evaluate.json to"
            " --out. The checkpoint file is hashed before and after and never modified.",
        )
    )
    report = commands.add_parser(
        "report",
        help="rebuild an output dir's CSVs, report and plots from its store",
        description="Rebuild CSVs, report.md and plots of an output dir from its results.sqlite"
        " (= normzoo compare CONFIG --out DIR --report-only, with the config stored in DIR).",
    )
    report.add_argument("dir", help="output dir of a compare run (holds results.sqlite)")
    report.add_argument(
        "--config",
        default=None,
        help="report the runs of this config (path or preset); default: the config of the"
        " run finished last in the store",
    )
    presets = commands.add_parser("presets", help="list the shipped presets, or show one's YAML")
    actions = presets.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="the names of the shipped presets (the default)")
    show = actions.add_parser("show", help="print a preset's YAML")
    show.add_argument("name", help="a preset name, e.g. quick")
    _dashboard_arguments(
        commands.add_parser(
            "dashboard",
            help="save the W&B Report (standard panels) of an experiment",
            description="Build the W&B Report of an experiment's runs: accuracy vs train and"
            " test batch size, vs severity, a parallel-coordinates panel over norm x train"
            " batch x lr x accuracy, curves, headline and significance tables. Saving needs a"
            " W&B login; --dry-run lists the panels offline.",
        )
    )
    sweep = commands.add_parser(
        "sweep",
        help="write a W&B sweep file over the config's learning-rate grid",
        description="Write a W&B sweep configuration (method grid, metric val/acc) over norm x"
        " train batch size x train.lr_grid x tune seed; each trial runs `normzoo compare` on one"
        " cell. Start it with `wandb sweep FILE`, then `wandb agent ID` from this directory.",
    )
    _config_arguments(sweep)
    sweep.add_argument("--out", default="sweep.yaml", help="file to write (default: sweep.yaml)")
    return parser


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    from normzoo.bench.plan.schema import WANDB_MODES

    _config_arguments(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="bare overrides right after CONFIG, applied after the --set ones (what a W&B sweep"
        " agent passes with ${args_no_hyphens}: the trial's values win)",
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
        help="W&B mode (default: execution.wandb = auto: online when logged in, else offline"
        " files under <out>/wandb; said at start). online without a login exits 2 at once",
    )
    flags = {
        "--dry-run": "validate the config, print the grid and the estimated cost; train nothing",
        "--download": "fetch a missing real dataset (CIFAR-10, MNIST, CIFAR-10-C; checksum-"
        "verified) before training (= --set data.download=true); never done otherwise",
        "--fresh": "delete what normzoo created in the output dir (store, weights, CSVs, report,"
        " the wandb/ it made) and start over; refused while another invocation uses the dir",
        "--report-only": "train nothing; rebuild CSVs, report and headline table from the store",
        "--wait": "when another invocation holds the output dir, wait for it instead of exiting",
        "--rerun-other-versions": "retrain stored runs that other normzoo/torch/lightning/timm"
        " versions produced (by default they are kept, and a warning lists the versions mixed)",
        "--retry-failed": "rerun runs recorded as failed or diverged (by default they are kept"
        " and not retried)",
        "--quiet": "for CI: no progress bar or progress lines; only warnings, errors and the"
        " final summary",
    }
    for flag, text in flags.items():
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument(
        "--workers-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="on a GPU machine the default is N workers per visible GPU (round-robin; default 1)",
    )


EVALUATE_EXIT_STATUSES = """exit status:
  0    every condition evaluated, report written, checkpoint unchanged
  1    the checkpoint file's SHA-256 changed during the evaluation (the report says so)
  2    bad input, before any evaluation: a missing checkpoint, keys that do not match the
       model (listed), a model spec that does not build, an invalid grid or dataset
"""


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from normzoo.bench.plan.schema import WANDB_MODES

    parser.add_argument("checkpoint", help="state dict (.pt/.pth), .safetensors or Lightning .ckpt")
    parser.add_argument(
        "--model",
        required=True,
        help="timm:<name>, torchvision:<name>, a built-in backbone (small_cnn, resnet_tiny, mlp)"
        " or package.module:factory (called with num_classes, in_channels, norm_layer)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="dataset: synthetic, cifar10, mnist, imagefolder (with --root), "
        "torchvision:<Class> or datamodule:package.module:Class (docs/data.md)",
    )
    parser.add_argument("--root", default=None, help="where a real dataset lives on disk")
    parser.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option (YAML value), e.g. --data-option test_size=2000 (repeatable)",
    )
    parser.add_argument(
        "--norm", default="batch", help="the norm the checkpoint was trained with (default batch)"
    )
    parser.add_argument(
        "--norm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of that norm, e.g. --norm-option groups=8 (repeatable)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="classifier outputs (default: the data's)"
    )
    grid = {
        "--test-batch-sizes": ("1 8 32 128", "test batch sizes"),
        "--stats-modes": (
            "running batch mix online adabn tent",
            "test-time statistics: running, batch, mix, online, adabn (re-estimated on each test"
            " set), tent",
        ),
        "--mix-priors": ("4 16 64", "mix: pseudo-samples of the running statistics (a sweep)"),
        "--shifts": ("clean gaussian_noise defocus_blur fog contrast", "clean and corruptions"),
        "--severities": ("3 5", "corruption severities 1..5"),
        "--compositions": (
            "iid label_skew:0.1 outliers:1",
            "test batch compositions: iid, label_skew:ALPHA, outliers:K, mixed_corruption",
        ),
    }
    for flag, (default, text) in grid.items():
        parser.add_argument(
            flag,
            nargs="+",
            default=default.split(),
            metavar="V",
            help=f"{text} (default: {default})",
        )
    parser.add_argument(
        "--adapt-split",
        choices=("val", "train", "none"),
        default="val",
        help="unlabeled data whose statistics PreciseBN re-estimates (default: val, a held-out"
        " 10%% of the train images); none skips PreciseBN",
    )
    parser.add_argument("--tent-lr", type=float, default=1e-3, help="TENT learning rate")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--out", default=None, help="output dir (default: runs/evaluate-<checkpoint name>)"
    )
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default="auto",
        help="W&B mode (default auto: online when logged in, else offline files under"
        " <out>/wandb); one run of job_type 'evaluate' with every condition",
    )


def _config_arguments(parser: argparse.ArgumentParser) -> None:
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
        help="override a config value, dotted key and YAML value, e.g. --set train.epochs=3"
        " --set 'norms=[batch,group]' (repeatable). Overrides that change results make the"
        " experiment '<name>-<hash>' in W&B and report titles unless experiment.name is set",
    )


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="ENTITY/PROJECT", help="where the runs were logged")
    _config_arguments(parser)
    parser.add_argument(
        "--out", default=None, help="the experiment's output dir: picks its significance table"
    )
    parser.add_argument("--table", default=None, help="significance table of the summary run")
    parser.add_argument("--dry-run", action="store_true", help="list the panels; save nothing")


def main(
    argv: list[str] | None = None, prog: str | None = None, default_command: str | None = None
) -> int:
    """Run ``normzoo`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``prog`` is the command name shown in ``--help``; ``default_command`` is the command meant
    when ``argv`` names none (``compare`` for ``benchmarks/compare.py``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if default_command and not (argv and argv[0] in {*COMMANDS, "--version"}):
        argv = [default_command, *argv]
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error (2, printed)
        return done.code if isinstance(done.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "compare":  # bare KEY=VALUE words (a W&B sweep trial's) after --set's
        if "=" in args.config and not Path(args.config).exists():
            args.config, args.overrides = DEFAULT_CONFIG, [args.config, *args.overrides]
        args.set = [*args.set, *args.overrides]
    global _quiet
    _quiet = getattr(args, "quiet", False)
    return COMMANDS[args.command](args)


# ---- compare ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A config as the CLI loaded it: the experiment identity and what ``--set`` changed."""

    config: object
    identity: str
    changed: dict


def load(args: argparse.Namespace) -> Loaded:
    """The config of ``args`` (``--set``, ``--workers``, ``--wandb``, ``--download`` applied)
    and its identity (`normzoo.bench.plan.identity`)."""
    from normzoo.bench.plan.config import load_config, stable_hash
    from normzoo.bench.plan.identity import changed_values, experiment_identity, names_experiment
    from normzoo.bench.plan.presets import resolve_config

    path = resolve_config(args.config)
    overrides = list(args.set)
    for flag, key in (("workers", "execution.workers"), ("wandb", "execution.wandb")):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "download", False):
        overrides.append("data.download=true")
    config = load_config(path, overrides)
    if not args.set or names_experiment(args.set):
        return Loaded(config, config.experiment.name, {})
    try:
        base = load_config(path)
    except ValueError:  # the file is only valid with the overrides: hash the overrides
        changed = {"--set": list(args.set)}
        return Loaded(config, f"{config.experiment.name}-{stable_hash(changed, 6)}", changed)
    return Loaded(config, experiment_identity(config, base), changed_values(base, config))


def _compare(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    logging.getLogger().setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return _compare_loaded(args)
    except KeyboardInterrupt:  # Ctrl-C before the grid's own handling (loading, validating)
        console.print("[yellow]interrupted by SIGINT before any run started[/]")
        return 130


def _compare_loaded(args: argparse.Namespace) -> int:
    from normzoo.bench.record.outdir import OutDirLock, check_out_dir
    from normzoo.bench.record.track import check_online, describe_mode, resolve_mode
    from normzoo.bench.run import Interrupted, interrupt_on_signals

    try:
        loaded = load(args)
        config = loaded.config
        out_dir = Path(args.out) if args.out else Path("runs") / config.experiment.name
        try:
            check_out_dir(out_dir, store=not args.fresh)
        except OSError as error:  # e.g. a name too long for the file system
            raise ValueError(f"--out {out_dir}: {error.strerror or error}") from error
        mode = resolve_mode(config.execution.wandb)
        check_online(mode)  # before any work
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 2
    if args.dry_run:
        _print_grid(loaded, out_dir, _workers(config, args), dry_run=True)
        _info(describe_mode(config.execution.wandb, mode))
        _print_plan(config, out_dir, args)
        return 0
    try:
        with interrupt_on_signals(), OutDirLock(out_dir, wait=args.wait):
            return _invoke(loaded, out_dir, args)
    except Interrupted as interrupt:
        console.print(f"[yellow]{_interrupted_line(interrupt)}[/]")
        return interrupt.exit_status
    except ValueError as error:  # the output dir is locked, its store unusable, data missing
        _error(str(error))
        return 2


def _identity_line(loaded: Loaded) -> str:
    if not loaded.changed:
        return f"[bold]{escape(loaded.identity)}[/]"
    return (
        f"[bold]{escape(loaded.identity)}[/] (--set changed {escape(', '.join(loaded.changed))};"
        " name it with --set experiment.name=...)"
    )


def _print_grid(loaded: Loaded, out_dir: Path, workers: int, dry_run: bool) -> None:
    from normzoo.bench.plan.cost import estimate_seconds
    from normzoo.bench.plan.grid import expand_conditions, expand_runs, grid_summary
    from normzoo.bench.record.timings import stored_timings

    config = loaded.config
    counts = grid_summary(config)
    restricted = any(n.train_batch_sizes for n in config.norms)
    cost = estimate_seconds(config, workers, stored_timings(config, out_dir))
    _info(
        f"{_identity_line(loaded)} (config hash {config.hash}) -> {out_dir}\n"
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
        f" {cost['basis']})"
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
        _info(table)
        labels = sorted({c.label for c in expand_conditions(config)})
        _info(f"test conditions ({len(labels)}): " + ", ".join(labels))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rich_table(frame) -> Table:
    """A DataFrame as a rich Table (wraps long column names instead of the whole table)."""
    table = Table(show_lines=False)
    table.add_column(str(frame.index.name or ""), style="bold", no_wrap=True)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *(str(v) for v in row))
    return table


def _shown_path(value: str | Path) -> str:
    """A path as a pasted command needs it: relative to the working dir when inside it."""
    path = Path(value)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def reproduce_command(args: argparse.Namespace, out_dir: Path) -> str:
    """The command, quoted for a shell, that reproduces this report from the working dir:
    ``python -m normzoo compare`` with the same config, overrides and output dir (stored runs
    are reused; missing ones are trained)."""
    config = args.config if not Path(args.config).is_file() else _shown_path(args.config)
    words = ["python", "-m", "normzoo", "compare", config]
    for item in args.set:
        words += ["--set", item]
    for flag in ("download", "retry_failed", "rerun_other_versions"):
        if getattr(args, flag, False):
            words.append("--" + flag.replace("_", "-"))
    return shlex.join([*words, "--out", _shown_path(out_dir)])


def _report(config, out_dir: Path, run_keys: list[str], tracker, title: str, command: str):
    from normzoo.bench.record.store import Store
    from normzoo.report import build_report

    with Store(out_dir) as store:
        csvs = store.export_csv(out_dir, run_keys)
        runs = store.runs_frame(run_keys)
        evaluations = store.evaluations_frame(run_keys)
        tuning = None
        if config.train.lr_grid is not None:
            from normzoo.bench.plan.tuning import tuning_table

            tuning = tuning_table(config, store.runs_frame())
    _info(f"results: {out_dir / 'results.sqlite'} ({', '.join(p.name for p in csvs)})")
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
    names = [n.name for n in config.norms]
    reference = "batch" if "batch" in names else config.norms[0].label
    report = build_report(
        runs,
        evaluations,
        out_dir,
        reference=reference,
        title=f"normzoo benchmark: {title}",
        command=command,
        stats=getattr(config, "stats", None),
        tuning=tuning,
    )
    _info("\n[bold]headline[/] (accuracy, mean ± 95% CI half-width over seeds)")
    _info(_rich_table(report.headline.T.rename_axis("condition")))
    console.print(f"\nreport: {report.path}")
    if tracker is not None and tracker.enabled:
        _log_summary(config, out_dir, tracker, report, runs, csvs)


def _log_summary(config, out_dir: Path, tracker, report, runs, csvs) -> None:
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
        _info(f"W&B summary run: {url}")


def _workers(config, args) -> int:
    from normzoo.bench.run import default_workers

    return config.execution.workers or default_workers(workers_per_gpu=args.workers_per_gpu)


def _print_plan(config, out_dir: Path, args) -> None:
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import plan_grid

    if args.fresh:
        _info("--fresh would delete what normzoo created in the output dir first")
        return
    with Store(out_dir, read_only=True) as store:
        plan = plan_grid(config, out_dir, store, args.retry_failed, args.rerun_other_versions)
    _info(plan.line())


def _invoke(loaded: Loaded, out_dir: Path, args) -> int:
    """The work under the output dir's lock: fresh, grid, report; returns the exit status."""
    from normzoo.bench.plan.config.validate import check_files, download_missing
    from normzoo.bench.record.outdir import claim, fresh, listing
    from normzoo.bench.record.store import Store, check_store
    from normzoo.bench.record.track import Tracker, describe_mode
    from normzoo.bench.run import grid_runs, grid_status, run_grid

    config = loaded.config
    if args.fresh:
        deleted = fresh(out_dir)
        _info(f"--fresh: deleted {', '.join(deleted) if deleted else 'nothing'}")
    check_store(out_dir / "results.sqlite")
    workers = _workers(config, args)
    _print_grid(loaded, out_dir, workers, dry_run=False)
    try:
        download_missing(config)  # only with data.download: true
    except (OSError, RuntimeError) as error:
        raise ValueError(f"download failed: {error}") from None
    missing = check_files(config)  # before any training: every run would fail without them
    if missing:
        raise ValueError("\n".join(missing))
    before = listing(out_dir)
    tracker = Tracker.from_config(config, out_dir, experiment=loaded.identity)
    if tracker.enabled and tracker.root == out_dir and "wandb" not in before:
        claim(out_dir, ["wandb"])
    project = f", project {tracker.project}" if tracker.enabled else ""
    _info(describe_mode(config.execution.wandb, tracker.mode) + project)
    if tracker.mode == "online":
        _info(f"W&B project: {tracker.project_url()}")
    if args.report_only:
        summary = grid_status(config, out_dir)
    else:
        summary = run_grid(
            config,
            out_dir,
            workers,
            tracker,
            retry_failed=args.retry_failed,
            show_progress=console.is_terminal and not args.quiet,
            rerun_other_versions=args.rerun_other_versions,
            workers_per_gpu=args.workers_per_gpu,
            console=console,
        )
        console.print(f"[bold]summary:[/] {summary.line()}")
    with Store(out_dir, read_only=True) as store:  # tuned lrs: the compared runs' keys
        runs = grid_runs(config, store)
    return _finish(loaded, out_dir, args, tracker, summary, before, runs)


def _finish(loaded: Loaded, out_dir: Path, args, tracker, summary, before, runs) -> int:
    """Errors, version warning, report, the W&B sync hint; returns the exit status."""
    from normzoo.bench.record.outdir import claim, listing
    from normzoo.bench.record.store import StoreError

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
    command = reproduce_command(args, out_dir)
    try:
        _report(loaded.config, out_dir, [r.key for r in runs], tracker, loaded.identity, command)
    except StoreError as error:  # stored values of the wrong type: a bad input, one line
        _error(str(error))
        status = 2
    except Exception as error:  # noqa: BLE001 - the stored results stay valid; say what failed
        log.debug("report failed", exc_info=True)
        console.print(f"[red]report failed:[/] {type(error).__name__}: {error}")
        status = max(status, 1)
    claim(out_dir, listing(out_dir) - before)
    if tracker.mode == "offline":
        _info(f"W&B offline runs: wandb sync {tracker.root}/wandb/offline-run-*")
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
    """``SIGINT``, ``SIGTERM``, ... for a signal number."""
    import signal

    return signal.Signals(signum).name


# ---- report, presets, dashboard --------------------------------------------------------------


def _stored_config(out_dir: Path, config_arg: str | None):
    """The config to report an output dir with: ``--config``, else the last finished run's."""
    import json

    from normzoo.bench.plan.config import load_config, parse_config
    from normzoo.bench.plan.presets import resolve_config
    from normzoo.bench.record.store import STORE_NAME, Store

    if not out_dir.exists():
        raise FileNotFoundError(f"'{out_dir}' does not exist; pass the --out dir of a run")
    if not out_dir.is_dir():
        raise FileNotFoundError(f"'{out_dir}' is not a directory; pass the --out dir of a run")
    if not (out_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"no {STORE_NAME} in '{out_dir}'; pass the --out dir of a run")
    with Store(out_dir, read_only=True) as store:
        runs = store.runs_frame()
    if runs.empty:
        raise ValueError(f"{out_dir / STORE_NAME} holds no runs; nothing to report")
    if config_arg:
        return load_config(resolve_config(config_arg))
    latest = runs.sort_values("finished_at", na_position="first").iloc[-1]
    try:
        return parse_config(json.loads(latest["config_json"]))
    except ValueError as error:
        raise ValueError(
            f"the config stored with run {latest['run_key']} in {out_dir / STORE_NAME} "
            f"cannot be read: {error}"
        ) from None


def _stored_identity(config) -> str:
    """A stored config's identity: against the shipped preset of its name, when there is one."""
    from normzoo.bench.plan.config import load_config
    from normzoo.bench.plan.identity import experiment_identity
    from normzoo.bench.plan.presets import presets, resolve_config

    name = config.experiment.name
    if name not in presets():
        return name
    try:
        return experiment_identity(config, load_config(resolve_config(name)))
    except (ValueError, FileNotFoundError):
        return name


def _checkpoint_report(out_dir: Path) -> int:
    """``report DIR`` on a ``normzoo evaluate`` output dir: its report rebuilt from
    ``evaluate.csv`` and ``evaluate.json`` (the intervals live there, not in the store)."""
    import json

    import pandas as pd

    from normzoo.report.checkpoint import headline, write_checkpoint_report

    frame = pd.read_csv(out_dir / "evaluate.csv", keep_default_na=False, na_values=[""])
    provenance = json.loads((out_dir / "evaluate.json").read_text())
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    path = write_checkpoint_report(rows, provenance, out_dir)
    for line in headline(pd.DataFrame(rows)):
        console.print(escape(line), soft_wrap=True)
    console.print(f"\nreport: {path} (a normzoo evaluate result, rebuilt from evaluate.csv)")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    """Rebuild DIR's report from its store, with the config its runs were made with."""
    from normzoo.bench.record.store import Store
    from normzoo.bench.run import grid_runs

    out_dir = Path(args.dir)
    if (out_dir / "evaluate.csv").is_file() and (out_dir / "evaluate.json").is_file():
        return _checkpoint_report(out_dir)
    words = ["python", "-m", "normzoo", "report", _shown_path(out_dir)]
    if args.config:
        words += ["--config", _shown_path(args.config)]
    try:  # StoreError (a ValueError): stored values of the wrong type, one line
        config = _stored_config(out_dir, args.config)
        report_dir = out_dir if _writable(out_dir) else _copy_of_store(out_dir)
        with Store(report_dir, read_only=True) as store:  # tuned lrs: the compared runs' keys
            keys = [r.key for r in grid_runs(config, store)]
        _report(config, report_dir, keys, None, _stored_identity(config), shlex.join(words))
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 2
    return 0


def _writable(out_dir: Path) -> bool:
    """Whether the report can be written next to the store (dir and store writable)."""
    from normzoo.bench.record.store import STORE_NAME

    return all(os.access(p, os.W_OK) for p in (out_dir, out_dir / STORE_NAME))


def _copy_of_store(out_dir: Path) -> Path:
    """A temporary dir holding a copy of a read-only dir's store, for the report (the store
    itself is never touched); says where the report goes."""
    from normzoo.bench.record.store import STORE_NAME

    target = Path(tempfile.mkdtemp(prefix="normzoo-report-"))
    for name in (STORE_NAME, f"{STORE_NAME}-wal"):
        if (out_dir / name).is_file():
            shutil.copyfile(out_dir / name, target / name)
    console.print(
        f"{out_dir} is read-only: the report and CSVs are written to {target} instead"
        " (the store is not touched)",
        soft_wrap=True,
    )
    return target


def _presets_command(args: argparse.Namespace) -> int:
    from normzoo.bench.plan.presets import presets, resolve_config

    if args.action != "show":
        print("\n".join(presets()))
        return 0
    name = args.name[: -len(".yaml")] if args.name.endswith(".yaml") else args.name
    if name not in presets():
        _error(f"no preset '{args.name}'; presets: {', '.join(presets()) or '(none installed)'}")
        return 2
    print(resolve_config(name).read_text(), end="")
    return 0


def _dashboard_command(args: argparse.Namespace) -> int:
    from normzoo.bench.record.dashboard import (
        build_dashboard,
        pick_significance_table,
        save_dashboard,
    )
    from normzoo.bench.record.track import Tracker, check_online

    try:
        entity, _, project = args.target.partition("/")
        if not entity or not project or "/" in project:
            raise ValueError(f"'{args.target}' is not ENTITY/PROJECT, e.g. my-team/normzoo")
        loaded = load(args)
        out = Path(args.out) if args.out else Path("runs") / loaded.config.experiment.name
        names = [p.stem for p in sorted(out.glob("significance*.csv"))]
        table = args.table or pick_significance_table(names)
        if args.dry_run:
            report = build_dashboard(loaded.config, project, entity, table, loaded.identity)
            for block in report.blocks:
                for panel in getattr(block, "panels", []):
                    print(f"{type(panel).__name__}: {getattr(panel, 'title', None) or panel}")
            return 0
        tracker = Tracker.from_config(loaded.config, out, "online", experiment=loaded.identity)
        check_online(tracker.mode)
        tracker = dataclasses.replace(tracker, project=project, entity=entity)
        print(f"W&B Report: {save_dashboard(loaded.config, tracker, table)}")
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 2
    return 0


def _sweep_command(args: argparse.Namespace) -> int:
    from normzoo.bench.plan.presets import resolve_config
    from normzoo.bench.plan.sweep import build_sweep, write_sweep

    try:
        sweep = build_sweep(args.config, resolve_config(args.config), args.set)
        path = write_sweep(sweep, args.out)
    except (ValueError, FileNotFoundError, OSError) as error:
        _error(str(error))
        return 2
    trials = 1
    for parameter in sweep["parameters"].values():
        trials *= len(parameter["values"])
    print(f"wrote {path} ({trials} trials); start it with: wandb sweep {shlex.quote(str(path))}")
    return 0


def _key_values(pairs: list[str], flag: str) -> dict:
    import yaml

    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r} is not KEY=VALUE, e.g. {flag} test_size=2000")
        values[key] = yaml.safe_load(value)
    return values


def _composition(text: str) -> str | dict:
    """``label_skew:0.1`` -> {name, alpha}, ``outliers:1`` -> {name, k}, a bare name as is."""
    import yaml

    name, sep, value = text.partition(":")
    if not sep:
        return name
    parameter = {"label_skew": "alpha", "outliers": "k", "classes": "k"}.get(name, "value")
    return {"name": name, parameter: yaml.safe_load(value)}


def evaluate_request(args: argparse.Namespace):
    """The `EvaluateRequest` of ``normzoo evaluate``'s arguments; the grid checked as a
    config's ``eval`` section (one ValueError naming every problem)."""
    import yaml

    from normzoo.bench.evaluate_checkpoint import EvaluateRequest
    from normzoo.bench.plan.config import parse_config

    raw = {
        "test_batch_sizes": [yaml.safe_load(v) for v in args.test_batch_sizes],
        "stats_modes": list(args.stats_modes),
        "mix_prior": [yaml.safe_load(v) for v in args.mix_priors],
        "shifts": list(args.shifts),
        "severities": [yaml.safe_load(v) for v in args.severities],
        "compositions": [_composition(v) for v in args.compositions],
        "tent_lr": args.tent_lr,
    }
    try:
        ev = parse_config({"eval": raw}).eval
    except ValueError as error:  # the config's lines, one per problem, as one line of flags
        text = "; ".join(line.strip(" -") for line in str(error).splitlines()[1:]) or str(error)
        flags = {"mix_prior": "--mix-priors", **{k: f"--{k.replace('_', '-')}" for k in raw}}
        for key, flag in flags.items():
            text = text.replace(f"eval.{key}", flag)
        raise ValueError(text) from None
    if args.resamples < 100:
        raise ValueError(f"--resamples {args.resamples}: use at least 100 (default 2000)")
    return EvaluateRequest(
        checkpoint=Path(args.checkpoint),
        model=args.model,
        dataset=args.data,
        ev=ev,
        norm=args.norm,
        norm_options=_key_values(args.norm_option, "--norm-option"),
        num_classes=args.num_classes,
        root=args.root,
        dataset_options=_key_values(args.data_option, "--data-option"),
        adapt_split=args.adapt_split,
        resamples=args.resamples,
        seed=args.seed,
    )


def _evaluate_command(args: argparse.Namespace) -> int:
    """``normzoo evaluate``: prepare (every input error exits 2 here), evaluate, report."""
    import pandas as pd

    from normzoo.bench.evaluate_checkpoint import evaluate_grid, prepare
    from normzoo.bench.execute.checkpoint import sha256_file
    from normzoo.bench.record.checkpoint_record import log_wandb, write_store
    from normzoo.bench.record.provenance import command_line, device_name, machine, versions
    from normzoo.bench.record.track import check_online, resolve_mode
    from normzoo.model_sources import describe
    from normzoo.report.checkpoint import headline, interval_rows, write_checkpoint_report

    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
    )
    try:
        request = evaluate_request(args)
        mode = resolve_mode(args.wandb)
        check_online(mode)
        prepared = prepare(request)
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 2
    out_dir = Path(args.out) if args.out else Path("runs") / f"evaluate-{request.checkpoint.stem}"
    console.print(
        f"evaluating {request.checkpoint} ({request.model}, {prepared.converted} batch norm"
        f" layers converted) on {request.dataset}; nothing is trained"
    )
    outcomes = evaluate_grid(prepared)
    sha256_after = sha256_file(request.checkpoint)
    n_images = len(prepared.datamodule.splits.test_labels)
    rows = interval_rows(outcomes, n_images, request.resamples, request.seed)
    provenance = {
        "checkpoint": str(request.checkpoint),
        "sha256_before": prepared.sha256_before,
        "sha256_after": sha256_after,
        "model": request.model,
        "norm": request.norm,
        "norm_options": request.norm_options,
        "key_prefix_stripped": prepared.prefix,
        "converted_batch_layers": prepared.converted,
        "built": describe(prepared.model),
        "dataset": request.dataset,
        "dataset_options": request.dataset_options,
        "adapt_split": request.adapt_split,
        "bootstrap_resamples": request.resamples,
        "bootstrap_seed": request.seed,
        "command": command_line(),
        "device": device_name(),
        "machine": machine(),
        **versions(),
    }
    path = write_checkpoint_report(rows, provenance, out_dir)
    store_path, run_key = write_store(provenance, rows, out_dir)
    for line in headline(pd.DataFrame(rows)):
        console.print(escape(line), soft_wrap=True)
    console.print(f"\nreport: {path}")
    console.print(f"results: {store_path} (run {run_key}; evaluate.csv with the intervals)")
    try:
        where = log_wandb(provenance, rows, out_dir, mode, run_key)
        if where is not None:
            console.print(f"W&B ({mode}): {where}")
    except Exception as error:  # noqa: BLE001 - W&B trouble never costs the stored results
        _error(f"W&B logging failed ({type(error).__name__}: {error}); results are stored")
    if sha256_after != prepared.sha256_before:
        _error(
            f"checkpoint {request.checkpoint} changed during the evaluation (SHA-256"
            f" {prepared.sha256_before} before, {sha256_after} after); its results are void"
        )
        return 1
    return 0


COMMANDS = {
    "compare": _compare,
    "evaluate": _evaluate_command,
    "report": _report_command,
    "presets": _presets_command,
    "dashboard": _dashboard_command,
    "sweep": _sweep_command,
}

if __name__ == "__main__":
    sys.exit(main())
