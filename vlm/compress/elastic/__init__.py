"""Flextron (arXiv 2406.10260): one elastic LM whose sub-networks share weights.

Importance ordering and nested widths (:mod:`.importance`, :mod:`.widths`) come first; elastic distillation,
the static router and the export of a chosen sub-network build on them.
"""

from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.importance import Importance, Ordering, activation_importance, apply_ordering, importance_ordering
from vlm.compress.elastic.widths import (ElasticConfig, ElasticLinear, ElasticSpace, LayerWidth, count_params, current_plan,
                                         make_elastic, plan_applied, set_plan)

__all__ = [
    "ElasticError", "Importance", "Ordering", "activation_importance", "importance_ordering", "apply_ordering",
    "ElasticConfig", "ElasticLinear", "ElasticSpace", "LayerWidth", "make_elastic", "set_plan", "current_plan",
    "plan_applied", "count_params",
]
