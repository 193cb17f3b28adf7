"""Statistics for the benchmark: paired comparisons over seeds and rank tests over blocks.

Pure functions from numpy arrays to small frozen result objects, thin over scipy (in the style
of rliable's ``metrics.py``); nothing here touches files, W&B or Lightning.

- :mod:`~normzoo.stats.paired`: paired t-test and t-interval (primary), exact sign-flip and
  Wilcoxon (robustness), TOST equivalence, minimum detectable effect, Holm over one family;
- :mod:`~normzoo.stats.collapse`: collapse counts compared by Fisher's exact test, its power;
- :mod:`~normzoo.stats.bootstrap`: cluster bootstrap over test samples (one checkpoint);
- :mod:`~normzoo.stats.ranks`: Friedman / Iman-Davenport / Nemenyi (Demšar 2006);
- :mod:`~normzoo.stats.intervals`, :mod:`~normzoo.stats.permutation`,
  :mod:`~normzoo.stats.corrections`, :mod:`~normzoo.stats.improvement`: the building blocks.
"""

from normzoo.stats._common import (
    DEGENERATE,
    DESCRIPTIVE,
    INSUFFICIENT,
    MIN_SEEDS,
    NOT_SIGNIFICANT,
    PRIMARY_TEST,
    ROBUSTNESS_TEST,
    SIGNIFICANT,
    UNDERPOWERED,
)
from normzoo.stats.bootstrap import BootstrapInterval, cluster_bootstrap
from normzoo.stats.collapse import (
    COLLAPSE_TEST,
    NO_COLLAPSE,
    CollapseComparison,
    chance_to_see_collapse,
    collapse_power,
    compare_collapse,
    detectable_collapse_rate,
    fisher_table,
)
from normzoo.stats.corrections import holm, holm_levels
from normzoo.stats.detectable import DETECTABLE_POWER, minimum_detectable_effect
from normzoo.stats.improvement import probability_of_improvement, sign_proportion
from normzoo.stats.intervals import (
    BOOTSTRAP_MIN_N,
    Interval,
    bca_interval,
    mean_confidence_interval,
    paired_t_interval,
    t_half_width,
)
from normzoo.stats.paired import (
    EQUIVALENT,
    MEAN_ESTIMAND,
    NOT_EQUIVALENT,
    NOT_TESTED,
    DetectableEffect,
    PairedComparison,
    cohens_dz,
    compare_family,
    compare_pairs,
    paired_comparison,
    paired_t_test,
)
from normzoo.stats.permutation import (
    PermutationTest,
    WilcoxonResult,
    min_pvalue,
    sign_flip_test,
    wilcoxon_test,
)
from normzoo.stats.ranks import (
    RankTestResult,
    average_ranks,
    critical_difference,
    friedman_nemenyi,
    nemenyi_cliques,
    nemenyi_q,
)

__all__ = [
    "BootstrapInterval",
    "cluster_bootstrap",
    "DETECTABLE_POWER",
    "BOOTSTRAP_MIN_N",
    "COLLAPSE_TEST",
    "MEAN_ESTIMAND",
    "NOT_TESTED",
    "NO_COLLAPSE",
    "CollapseComparison",
    "DetectableEffect",
    "chance_to_see_collapse",
    "collapse_power",
    "compare_collapse",
    "detectable_collapse_rate",
    "fisher_table",
    "minimum_detectable_effect",
    "DEGENERATE",
    "DESCRIPTIVE",
    "EQUIVALENT",
    "INSUFFICIENT",
    "MIN_SEEDS",
    "NOT_EQUIVALENT",
    "NOT_SIGNIFICANT",
    "PRIMARY_TEST",
    "ROBUSTNESS_TEST",
    "SIGNIFICANT",
    "UNDERPOWERED",
    "Interval",
    "PairedComparison",
    "PermutationTest",
    "RankTestResult",
    "WilcoxonResult",
    "average_ranks",
    "bca_interval",
    "cohens_dz",
    "compare_family",
    "compare_pairs",
    "critical_difference",
    "friedman_nemenyi",
    "holm",
    "holm_levels",
    "mean_confidence_interval",
    "min_pvalue",
    "nemenyi_cliques",
    "nemenyi_q",
    "paired_comparison",
    "paired_t_interval",
    "paired_t_test",
    "probability_of_improvement",
    "sign_flip_test",
    "sign_proportion",
    "t_half_width",
    "wilcoxon_test",
]
