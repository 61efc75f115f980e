"""Built-in reward models, imported (with torch and transformers) only when one is built."""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin import hookimpl
from eva_plugin.default_plugins import Lazy
from eva_plugin.rewards import options


@hookimpl
def register_reward_models(register: Callable) -> None:
    register("sequence_classification", Lazy("eva_plugin.rewards.sequence_classification:SequenceClassificationReward",
                                             options.SequenceClassificationOptions))
    register("embedding", Lazy("eva_plugin.rewards.embedding:EmbeddingSimilarityReward", options.EmbeddingOptions))
    register("pairwise", Lazy("eva_plugin.rewards.pairwise:PairwisePreferenceReward", options.PairwiseOptions))
    register("pairrm", Lazy("eva_plugin.rewards.pairrm:PairRMReward", options.PairRMOptions))
