"""``SoftSPPOTrainer``: the SPPO authors' loss with soft win probabilities, which TRL only has in its
hard (P = 1 / 0) form (``sppo_hard``), on ``DPOTrainer``'s forward passes plus the optional NLL term."""

from __future__ import annotations

import torch
from trl import DPOTrainer

from eva_plugin.solver.nll import NLLDPOTrainer, _FirstCall

#: Per-pair columns the soft SPPO loss reads (``solver.pairs.build_pairs`` writes them).
PROBABILITIES = ("chosen_probability", "rejected_probability")


def soft_sppo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
                   chosen_probability: torch.Tensor, rejected_probability: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """Per pair: ½[(log π/π_ref(y_w) − (P_w − ½)/β)² + (log π/π_ref(y_l) − (P_l − ½)/β)²] (SPPO, Wu et
    al. 2024, Eq. 4.7 with the preference model's win probabilities; the two squares averaged as in the
    authors' trainer)."""
    chosen_target = (chosen_probability.to(chosen_logratios.dtype) - 0.5) / beta
    rejected_target = (rejected_probability.to(rejected_logratios.dtype) - 0.5) / beta
    return ((chosen_logratios - chosen_target) ** 2 + (rejected_logratios - rejected_target) ** 2) / 2


def _sequence_logps(outputs, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log p over each completion, split into the [chosen; rejected] halves of the batch."""
    mask = completion_mask[..., 1:]
    logps = (outputs.log_probs[:, -mask.size(1):] * mask.to(outputs.log_probs.dtype)).sum(dim=1)
    return logps.chunk(2, dim=0)


class _WithProbabilities:
    """A preference collator that also hands the loss each pair's win probabilities."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        for column in PROBABILITIES:
            if column in examples[0]:
                batch[column] = torch.tensor([float(e[column]) for e in examples], dtype=torch.float32)
        return batch


class SoftSPPOTrainer(NLLDPOTrainer):
    """The SPPO authors' soft loss on ``DPOTrainer``'s forward passes (plus the optional NLL term).

    The pair dataset carries ``chosen_probability`` / ``rejected_probability``; TRL's own
    ``loss_type`` (``sppo_hard``) is computed as usual for its metrics, and its loss replaced.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.ld_alpha is not None:
            raise ValueError("soft SPPO sums whole completions: unset `ld_alpha`")
        self.data_collator = _WithProbabilities(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *PROBABILITIES]

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in PROBABILITIES})

    def _compute_loss(self, model, inputs, return_outputs):
        inputs = dict(inputs)
        missing = [c for c in PROBABILITIES if c not in inputs]
        if missing:
            raise ValueError(f"soft SPPO needs the pair columns {', '.join(missing)}")
        chosen_p, rejected_p = (inputs.pop(c) for c in PROBABILITIES)
        policy = _FirstCall(model)
        reference = None
        if not self.precompute_ref_logps:
            if self.ref_model is None:
                raise ValueError("soft SPPO needs an explicit reference model (or precompute_ref_log_probs)")
            reference = self.ref_model = _FirstCall(self.ref_model)
        try:
            result = DPOTrainer._compute_loss(self, policy, inputs, return_outputs)
        finally:
            if reference is not None:
                self.ref_model = reference.model
        completion_mask = inputs["completion_mask"]
        chosen_logps, rejected_logps = _sequence_logps(policy.outputs, completion_mask)
        if reference is None:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = _sequence_logps(reference.outputs, completion_mask)
        loss = soft_sppo_loss(chosen_logps - ref_chosen, rejected_logps - ref_rejected,
                              chosen_p, rejected_p, self.beta).mean()
        if self.nll_alpha:
            loss = self.plus_nll(loss, policy.outputs.log_probs, completion_mask)
        return (loss, result[1]) if return_outputs else loss
