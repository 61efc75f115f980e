"""Length-normalised NLL on the chosen response, added to the preference loss.

loss = preference loss + α · mean over the batch of NLL(y+) / |y+|^p

(EVA's "DPO + length-penalized NLL"; not TRL's ``sft`` term, which is a token mean over
the whole batch). It is computed from the policy forward pass the trainer already made:
for DPO by recording that call's per-token log-probs, for SimPO from the per-token
average log-prob of y+ that the CPO trainer computes anyway. p (``nll_length_power``, DPOTrainer
losses only) is 1 by default; the EVA authors' RPO term (a token mean divided once more by the
micro-batch's mean chosen length) is p = 2 at per-device batch 1, which all their scripts use.
"""

from __future__ import annotations

import torch
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer


def length_normalised_nll(per_token_logps: torch.Tensor, completion_mask: torch.Tensor,
                          power: float = 1.0) -> torch.Tensor:
    """Mean over the chosen half of the batch of −Σ log p(y+_i) / |y+|^power.

    ``per_token_logps`` are the log-probs of tokens 1..L (shifted), ``completion_mask`` the
    unshifted [chosen; rejected] completion mask as TRL's DPO collator builds it.
    """
    mask = completion_mask[..., 1:]
    logps = per_token_logps[:, -mask.size(1):]
    chosen_logps, _ = logps.chunk(2, dim=0)
    chosen_mask, _ = mask.chunk(2, dim=0)
    chosen_mask = chosen_mask.to(chosen_logps.dtype)
    per_sequence = -(chosen_logps * chosen_mask).sum(dim=1) / chosen_mask.sum(dim=1).clamp(min=1.0) ** power
    return per_sequence.mean()


class _FirstCall:
    """Calls through to a model and keeps the outputs of the first call (the policy forward)."""

    def __init__(self, model) -> None:
        self.model, self.outputs = model, None

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if self.outputs is None:
            self.outputs = out
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


class NLLDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss also carries ``nll_alpha`` · length-normalised NLL of y+."""

    def __init__(self, *args, nll_alpha: float = 0.0, nll_length_power: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nll_alpha, self.nll_length_power = float(nll_alpha), float(nll_length_power)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.nll_alpha:
            return super()._compute_loss(model, inputs, return_outputs)
        recorder = _FirstCall(model)
        result = super()._compute_loss(recorder, inputs, return_outputs)
        loss = self.plus_nll(result[0] if return_outputs else result, recorder.outputs.log_probs,
                             inputs["completion_mask"])
        return (loss, result[1]) if return_outputs else loss

    def plus_nll(self, loss: torch.Tensor, log_probs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """``loss`` + ``nll_alpha`` · the length-normalised NLL of y+ from the policy forward's per-token
        ``log_probs``; the NLL is logged as the ``nll_per_token`` metric (gathered over the processes)."""
        nll = length_normalised_nll(log_probs, completion_mask, self.nll_length_power)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["nll_per_token"].append(self.accelerator.gather(nll.detach()).mean().item())
        return loss + self.nll_alpha * nll


class NLLCPOTrainer(CPOTrainer):
    """SimPO (``CPOTrainer``, ``cpo_alpha = 0``) plus ``nll_alpha`` · length-normalised NLL of y+.

    With ``loss_type: simpo`` the trainer's ``chosen_logps`` already are per-token averages,
    so −chosen_logps is exactly NLL(y+)/|y+| for each pair.
    """

    def __init__(self, *args, nll_alpha: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nll_alpha = float(nll_alpha)

    def cpo_loss(self, policy_chosen_logps, policy_rejected_logps):
        losses, chosen_rewards, rejected_rewards = super().cpo_loss(policy_chosen_logps, policy_rejected_logps)
        if self.nll_alpha:
            losses = losses - self.nll_alpha * policy_chosen_logps
        return losses, chosen_rewards, rejected_rewards
