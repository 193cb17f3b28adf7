"""The benchmark's vocabulary, in one place: the names a config may use and the result columns.

Everything the config, the grid, the store, the report, W&B and the CSV export call by name is
defined here (or, for names a lower layer implements, re-exported from that layer so that there
is still exactly one definition): stats modes and adaptation methods from
:mod:`normzoo.testtime`, batch compositions from :mod:`normzoo.data.shifts`. Norm names are not
here: :mod:`normzoo.registry` owns them and their aliases, and a parsed config holds canonical
names only.
"""

from __future__ import annotations

from normzoo.data.shifts import TEST_COMPOSITIONS, TRAIN_COMPOSITIONS
from normzoo.testtime import ADAPT_METHODS, STATS_MODES

# --- test-time statistics -------------------------------------------------------------------
# What an evaluation may normalize with: a `normzoo.stats_mode` or an `normzoo.adapt` method.
EVAL_STATS_MODES = (*STATS_MODES, *ADAPT_METHODS)


MIX = "mix"  # the stats mode whose prior eval.mix_prior sets (a list sweeps it)
# A stats mode in a result is the label of a `normzoo.bench.plan.config.specs.StatsMode`.

# Stats modes whose predictions are per-sample functions of the input (the model's statistics do
# not depend on how the test set is batched); see `grid.computed_condition`.
PER_SAMPLE_MODES = ("running",)
# Stats modes whose predictions depend on the current test batch only (no state across batches).
BATCHWISE_MODES = ("batch", "mix")

# --- batch compositions ----------------------------------------------------------------------
# TRAIN_COMPOSITIONS and TEST_COMPOSITIONS are imported above from normzoo.data.shifts, which
# implements them; a composition's parameters (alpha, k) are typed by plan.specs.Composition.
COMPOSITIONS = tuple(dict.fromkeys((*TRAIN_COMPOSITIONS, *TEST_COMPOSITIONS)))

# --- training -------------------------------------------------------------------------------
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
LR_SCALINGS = ("none", "linear")

# --- evaluation data ------------------------------------------------------------------------
SHIFT_SOURCES = ("generated", "cifar10c")
CLEAN = "clean"  # the shift name of uncorrupted test data (severity 0)
MIXED = "mixed"  # the shift name of mixed-corruption batches

# --- execution ------------------------------------------------------------------------------
WANDB_RUN_MODES = ("offline", "online", "disabled")  # what wandb.init accepts
WANDB_MODES = ("auto", *WANDB_RUN_MODES)  # auto: online when logged in, else offline
EXECUTORS = ("local", "submitit")
RUN_STATUSES = ("ok", "failed", "diverged")

# --- result columns ---------------------------------------------------------------------------
# A train condition and a test condition, as stored (compositions as their labels).
TRAIN_KEYS = ("experiment", "dataset", "backbone", "train_batch_size", "train_composition")
TEST_KEYS = ("test_batch_size", "stats_mode", "shift", "severity", "test_composition")
# Columns that identify a setting whose seeds are paired (norm and train batch size vary inside).
SETTING_KEYS = ("experiment", "dataset", "backbone", "train_composition")

# The provenance that trained a run: the code and libraries, and where (issue 12).
PROVENANCE_COLUMNS = (
    "normzoo_version",
    "git_sha",
    "torch_version",
    "lightning_version",
    "timm_version",
    "device",
)
# The provenance that makes a stored run "of another version" (--rerun-other-versions).
VERSION_COLUMNS = PROVENANCE_COLUMNS[:-1]
# Run roles: `compare` runs are the experiment; `tune` runs only select learning rates
# (normzoo.bench.plan.tuning) and stay out of every comparison.
RUN_ROLES = ("compare", "tune")
# What training reached (issue 23's convergence contract), NULL for failed/diverged runs:
# accuracy and mean cross-entropy of the final model in eval mode on a fixed training subset
# (normzoo.bench.execute.train.measure), the same subset in train mode at the run's train batch size
# (batch-dependent norms only), the learning rate the run trained with, and its role.
CONVERGENCE_COLUMNS = ("train_accuracy", "train_loss", "train_accuracy_train_mode", "lr", "role")
# The `runs` table of the results store, in order.
RUN_COLUMNS = (
    "run_key",
    "experiment",
    "dataset",
    "backbone",
    "norm",
    "norm_options",
    "train_batch_size",
    "train_composition",
    "seed",
    "status",
    "error",
    "val_accuracy",
    "train_seconds",
    "eval_seconds",
    "config_hash",
    "config_json",
    "started_at",
    "finished_at",
    *PROVENANCE_COLUMNS,
    *CONVERGENCE_COLUMNS,
    # stacked training (bench/execute/train/stack.py): how many runs trained as one, and which slot
    "stack_size",
    "stack_slot",
)
# The `evaluations` table of the results store, in order. Metrics over the n_test scored
# samples (injected outliers carry no label): `accuracy`; `loss`, the mean negative
# log-likelihood (softmax cross-entropy, nats: the NLL of calibration studies); `ece`, the
# expected calibration error over 15 equal-width confidence bins (Guo et al. 2017).
EVAL_COLUMNS = (
    "run_key",
    *TEST_KEYS,
    "accuracy",
    "loss",
    "n_test",
    "computed_as",
    "ece",
)
# The `curves` table of the results store (training curves, one row per logged value).
CURVE_COLUMNS = ("run_key", "step", "epoch", "metric", "value")
# Columns of the exported runs frame (the Results schema), in order; the rest are extra.
SCHEMA_RUN_COLUMNS = RUN_COLUMNS[:13]
# What the report needs of each exported frame.
REPORT_RUN_COLUMNS = ("run_key", "norm", "norm_options", "seed", "status", "error", *TRAIN_KEYS)
REPORT_EVALUATION_COLUMNS = (
    "run_key",
    "norm",
    "norm_options",
    "seed",
    "accuracy",
    *TRAIN_KEYS,
    *TEST_KEYS,
)

# execution.submitit keys -> submitit parameter (None: used by normzoo itself)
SUBMITIT_OPTIONS = {
    "cluster": None,  # auto (SLURM when sbatch is found, else local), slurm or local
    "partition": "slurm_partition",
    "time_min": "timeout_min",
    "mem_gb": "mem_gb",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_task": "gpus_per_node",  # one task per job (per node), so per task = per node
    "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "setup": "slurm_setup",  # shell lines run before the job, e.g. module load / venv activate
    "additional": "slurm_additional_parameters",  # any other sbatch option, e.g. {constraint: a100}
    "runs_per_job": None,
}
SUBMITIT_CLUSTERS = ("auto", "slurm", "local")
SUBMITIT_INTS = ("time_min", "cpus_per_task", "gpus_per_task", "array_parallelism", "runs_per_job")
