"""Flextron (arXiv 2406.10260): one elastic LM whose sub-networks share weights and deploy at many sizes.

:mod:`.importance` orders heads and MLP neurons by activation importance (outputs unchanged), :mod:`.widths`
runs the LM at nested per-layer widths (weight prefixes), :mod:`.distill` trains every width at once by elastic
distillation from the original model, :mod:`.router` picks widths for a parameter, memory or latency budget,
and :mod:`.deploy` writes a chosen width as a plain model folder.
"""

from vlm.compress.elastic.deploy import export_subnetwork, extract_subnetwork, load_elastic, save_elastic
from vlm.compress.elastic.distill import DistillConfig, DistillResult, train_elastic
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.importance import Importance, Ordering, activation_importance, apply_ordering, importance_ordering
from vlm.compress.elastic.router import Budget, LatencyTable, RouteResult, measure_latency, parse_budget, plan_cost, route
from vlm.compress.elastic.run import run_flextron, width_table
from vlm.compress.elastic.widths import (
                                         ElasticConfig,
                                         ElasticLinear,
                                         ElasticSpace,
                                         LayerWidth,
                                         count_params,
                                         current_plan,
                                         make_elastic,
                                         plan_applied,
                                         set_plan,
)

__all__ = [
                                         "Budget",
                                         "DistillConfig",
                                         "DistillResult",
                                         "ElasticConfig",
                                         "ElasticError",
                                         "ElasticLinear",
                                         "ElasticSpace",
                                         "Importance",
                                         "LatencyTable",
                                         "LayerWidth",
                                         "Ordering",
                                         "RouteResult",
                                         "activation_importance",
                                         "apply_ordering",
                                         "count_params",
                                         "current_plan",
                                         "export_subnetwork",
                                         "extract_subnetwork",
                                         "importance_ordering",
                                         "load_elastic",
                                         "make_elastic",
                                         "measure_latency",
                                         "parse_budget",
                                         "plan_applied",
                                         "plan_cost",
                                         "route",
                                         "run_flextron",
                                         "save_elastic",
                                         "set_plan",
                                         "train_elastic",
                                         "width_table",
]
