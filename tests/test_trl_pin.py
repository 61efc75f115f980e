"""TRL is pinned to one minor version because ``eva_plugin.solver.nll`` builds on its private names."""

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
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    # NLLDPOTrainer overrides _compute_loss(model, inputs, return_outputs) and records the policy forward
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == ["self", "model", "inputs",
                                                                            "return_outputs"]
    init = inspect.getsource(DPOTrainer.__init__)
    assert "self._metrics = " in init  # per-mode metric lists it appends nll_per_token to
    assert '"log_probs"' in init  # the fused LM head returns per-token log-probs as `.log_probs`
    assert '"completion_mask"' in inspect.getsource(inspect.getmodule(DPOTrainer))
    # NLLCPOTrainer wraps cpo_loss(policy_chosen_logps, policy_rejected_logps)
    params = list(inspect.signature(CPOTrainer.cpo_loss).parameters)
    assert params[:3] == ["self", "policy_chosen_logps", "policy_rejected_logps"]


def test_the_private_trl_names_soft_sppo_uses_exist():
    from trl import DPOTrainer

    # SoftSPPOTrainer adds its columns to the signature columns, wraps the collator and records both forwards
    assert hasattr(DPOTrainer, "_set_signature_columns_if_needed") and hasattr(DPOTrainer, "compute_ref_log_probs")
    init = inspect.getsource(DPOTrainer.__init__)
    assert "self.precompute_ref_logps = " in init and "self.ld_alpha = " in init
    assert "self.ref_model(" in inspect.getsource(DPOTrainer._compute_loss)
