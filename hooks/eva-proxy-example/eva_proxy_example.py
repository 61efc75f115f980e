"""An example third-party eva-plugin plugin.

``quantile_gap`` ranks prompts by the spread between the 90th and 10th percentile of
their sampled rewards: like EVA's ``a_min`` (max − min) but not decided by one outlier.
Use it from a recipe with ``eva: {proxy: quantile_gap}``.
"""

import numpy as np

from eva_plugin import hookimpl
from eva_plugin.creator.proxies import Proxy


def quantile_gap(rewards: np.ndarray) -> float:
    return float(np.quantile(rewards, 0.9) - np.quantile(rewards, 0.1))


@hookimpl
def register_proxies(register):
    register("quantile_gap", Proxy(quantile_gap, description="90th - 10th percentile of rewards"))
