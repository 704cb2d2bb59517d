"""mlem-jax: the Multilevel Euler-Maruyama method in JAX."""

import importlib.metadata

from ._calibrate import LevelCosts, LevelStatistics, fit_gamma, level_costs, level_statistics
from ._diffrax import MLEM, MLEMSolverState, MultilevelTerm, evaluations
from ._family import FamilyLevel, FamilyWithBase, LevelFamily, StackedFamily, marginal_costs
from ._frontier import cost_to_reach, frontier_slope, pareto_frontier
from ._levels import (
    draw_levels,
    family_drift,
    levels_to_evaluate,
    multilevel_drift,
    needed_levels,
)
from ._precision import InPrecision, in_precision
from ._prediction import (
    EMErrorModel,
    SpeedupPrediction,
    fit_em_error_model,
    predict_speedup,
    randomisation_variance,
)
from ._probabilities import correction_costs, optimal_probabilities
from ._profile import VarianceProfile, variance_profile
from ._sampled_path import SampledBrownianPath, sample_brownian_path
from ._schedule import Probabilities, checked_probabilities, step_times
from ._sensitivity import error_sensitivity
from ._sharding import batch_mesh, batch_sharding, shard_batch
from ._solve import Solution, solve
from ._step import MLEMInfo, MLEMState, build_step, diagonal_noise, init
from ._synthetic import RandomFeatureDrift, random_feature_drift, random_feature_levels
from ._timing import interleaved_median_seconds, median_seconds


__version__ = importlib.metadata.version("mlem-jax")

__all__ = [
    "EMErrorModel",
    "FamilyLevel",
    "FamilyWithBase",
    "InPrecision",
    "LevelCosts",
    "LevelFamily",
    "LevelStatistics",
    "MLEM",
    "MLEMInfo",
    "MLEMSolverState",
    "MLEMState",
    "MultilevelTerm",
    "Probabilities",
    "RandomFeatureDrift",
    "SampledBrownianPath",
    "Solution",
    "SpeedupPrediction",
    "StackedFamily",
    "VarianceProfile",
    "batch_mesh",
    "batch_sharding",
    "build_step",
    "checked_probabilities",
    "correction_costs",
    "cost_to_reach",
    "diagonal_noise",
    "draw_levels",
    "error_sensitivity",
    "evaluations",
    "family_drift",
    "fit_em_error_model",
    "fit_gamma",
    "frontier_slope",
    "in_precision",
    "init",
    "interleaved_median_seconds",
    "level_costs",
    "level_statistics",
    "levels_to_evaluate",
    "marginal_costs",
    "median_seconds",
    "multilevel_drift",
    "needed_levels",
    "optimal_probabilities",
    "pareto_frontier",
    "predict_speedup",
    "random_feature_drift",
    "random_feature_levels",
    "randomisation_variance",
    "sample_brownian_path",
    "shard_batch",
    "solve",
    "step_times",
    "variance_profile",
]
