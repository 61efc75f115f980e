"""TRL is pinned to one minor version: ``eva_plugin.solver.nll`` and ``solver.sppo`` build on its private names."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_trl_is_inside_the_pinned_range():
    pin = re.search(r'"trl>=(\d+)\.(\d+),<(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin trl to one minor version range"
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    installed = tuple(int(x) for x in version("trl").split(".")[:2])
    assert low <= installed < high


def test_the_private_trl_names_the_nll_trainers_use_exist():
    """What the trainers do with them (the policy forward's ``log_probs``, the ``completion_mask``,
    the ``nll_per_token`` metric) is checked on real batches by tests/test_nll.py."""
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    # NLLDPOTrainer overrides _compute_loss(model, inputs, return_outputs) and records the policy forward
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == ["self", "model", "inputs",
                                                                            "return_outputs"]
    # NLLCPOTrainer wraps cpo_loss(policy_chosen_logps, policy_rejected_logps)
    params = list(inspect.signature(CPOTrainer.cpo_loss).parameters)
    assert params[:3] == ["self", "policy_chosen_logps", "policy_rejected_logps"]


def test_the_private_trl_names_soft_sppo_uses_exist():
    """Recording both forwards (``ref_model`` called in ``_compute_loss``) and reading
    ``precompute_ref_logps`` / ``ld_alpha`` are checked against the formula by tests/test_sppo.py."""
    from trl import DPOTrainer

    # SoftSPPOTrainer adds its columns to the signature columns and wraps the reference log-probs
    assert hasattr(DPOTrainer, "_set_signature_columns_if_needed") and hasattr(DPOTrainer, "compute_ref_log_probs")
