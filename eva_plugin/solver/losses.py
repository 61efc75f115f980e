"""The preference losses of the papers, each with its own knobs and the EVA paper's defaults.

| loss        | TRL trainer                                      | knobs (paper default, EVA Table 6) |
|-------------|--------------------------------------------------|------------------------------------|
| `dpo`       | DPOTrainer, `loss_type: sigmoid`                 | beta 0.05, label_smoothing 0       |
| `ipo`       | DPOTrainer, `loss_type: ipo`                     | beta 0.05 (not in the paper: DPO's)|
| `sppo`      | DPOTrainer + the authors' soft SPPO (``solver.sppo``) | beta 0.001                    |
| `sppo_hard` | DPOTrainer, `loss_type: sppo_hard` (P = 1 / 0)   | beta 0.001                         |
| `simpo`     | experimental CPOTrainer, `simpo`, `cpo_alpha: 0` | beta 10, gamma 5                   |
| `orpo`      | experimental ORPOTrainer                         | lambda 0.5 (TRL calls it `beta`)   |
| null        | DPOTrainer with the recipe's own `loss_type` / `loss_weights` / `beta` | nll_alpha only |

``nll_alpha`` (default 0) adds α · length-normalised NLL of the chosen response for every
DPOTrainer loss and simpo (``eva_plugin.solver.nll``; sppo: ``eva_plugin.solver.sppo``):
Σ NLL(y+) / |y+|^p with ``nll_length_power`` p (DPOTrainer losses; default 1, the per-token
mean; 2 is the EVA authors' doubly normalised RPO term at per-device batch 1). TRL only rejects
a bad loss at the first training step; here it fails at parse time.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from eva_plugin.errors import RecipeError
from eva_plugin.typed import range_problem, short_repr


@dataclass(frozen=True)
class Loss:
    trainer: str  # dpo | sppo | cpo | orpo
    loss_type: str | None
    knobs: dict[str, float] = field(default_factory=dict)
    uses_reference: bool = True
    columns: tuple[str, ...] = ()  # pair columns the loss reads besides prompt/chosen/rejected


LOSSES: dict[str, Loss] = {
    "dpo": Loss("dpo", "sigmoid", {"beta": 0.05, "label_smoothing": 0.0, "nll_alpha": 0.0}),
    "ipo": Loss("dpo", "ipo", {"beta": 0.05, "nll_alpha": 0.0}),
    # TRL's loss_type is only a placeholder: the soft SPPO trainer computes the loss itself
    "sppo": Loss("sppo", "sppo_hard", {"beta": 0.001, "nll_alpha": 0.0},
                 columns=("chosen_probability", "rejected_probability")),
    "sppo_hard": Loss("dpo", "sppo_hard", {"beta": 0.001, "nll_alpha": 0.0}),
    "simpo": Loss("cpo", "simpo", {"beta": 10.0, "gamma": 5.0, "nll_alpha": 0.0}, uses_reference=False),
    "orpo": Loss("orpo", None, {"lambda": 0.5}, uses_reference=False),
}

#: The range of each knob (``typed.range_problem``): beta scales the log-ratio (0 or less cannot learn a
#: preference), a margin or weight below 0 turns the loss around, DPO's label smoothing is at most 0.5.
KNOB_RANGES: dict[str, dict[str, float]] = {
    "beta": {"gt": 0}, "gamma": {"ge": 0}, "lambda": {"gt": 0}, "nll_alpha": {"ge": 0},
    "nll_length_power": {"ge": 0, "le": 2},
    "label_smoothing": {"ge": 0, "le": 0.5},
}

#: ``eva.loss: null`` with a recipe ``loss_type``: the recipe's own DPOConfig loss, untouched.
OWN = Loss("dpo", None, {"nll_alpha": 0.0})

#: Knobs a DPOTrainer-family loss takes only when the recipe sets them (their default leaves the knobs, and
#: so the fingerprints of finished rounds, as they were): Σ NLL(y+) / |y+|^p, p = 1 unless set.
OPTIONAL_KNOBS = {"nll_length_power": 1.0}


def spec(name: str | None) -> Loss:
    """The table row of ``name`` (``None``: the recipe's own DPOConfig loss)."""
    return OWN if name is None else LOSSES[name]


def loss_knobs(name: str | None, loss_args: dict, recipe_beta: float | None = None) -> dict[str, float]:
    """The knobs of ``name``: paper defaults, then the recipe's own ``beta`` (DPO family),
    then ``eva.loss_args``. Unknown losses and foreign knobs fail with the valid choices.
    ``None`` (the recipe's own loss) only takes the NLL knobs: its beta is the recipe's ``beta``."""
    if name is not None and name not in LOSSES:
        raise RecipeError(f"unknown eva.loss {short_repr(name)}; known: {', '.join(LOSSES)}")
    row = spec(name)
    takes = set(row.knobs) | (set(OPTIONAL_KNOBS) if row.trainer in ("dpo", "sppo") else set())
    foreign = sorted(set(loss_args) - takes)
    if foreign:
        whose = f"loss {name!r}" if name is not None else "the recipe's own `loss_type` (eva.loss: null)"
        raise RecipeError(f"eva.loss_args {', '.join(foreign)} do not belong to {whose}; "
                          f"it takes: {', '.join([*row.knobs, *sorted(takes - set(row.knobs))])}")
    knobs = dict(row.knobs)
    if recipe_beta is not None and row.trainer in ("dpo", "sppo") and name is not None:
        knobs["beta"] = float(recipe_beta)
    knobs.update({k: float(v) for k, v in loss_args.items()})
    for key, value in knobs.items():
        problem = range_problem(KNOB_RANGES.get(key, {}), value)
        if problem:
            raise RecipeError(f"`eva.loss_args.{key}` {problem}")
    return knobs


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def check_recipe_loss(name: str | None, loss_type, loss_weights) -> None:
    """``eva.loss`` and a recipe's TRL ``loss_type``/``loss_weights`` may not both choose the loss,
    unless they agree (``eva.loss: ipo`` with ``loss_type: ipo``)."""
    if name is None or (loss_type is None and loss_weights is None):
        return
    row = LOSSES[name]
    agrees = loss_weights is None and row.trainer == "dpo" and _as_list(loss_type) == [row.loss_type]
    if not agrees:
        shown = loss_type if loss_type is not None else f"loss_weights {loss_weights}"
        raise RecipeError(f"eva.loss: {name} conflicts with the recipe's `loss_type: {shown}`; keep one (eva.loss: "
                          "null trains with the recipe's own TRL loss)")


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


#: DPOConfig keys that belong to the DPO loss, not carried over to CPO/ORPO configs.
_DPO_ONLY = {"loss_type", "loss_weights", "beta", "label_smoothing"}


def round_config(training, name: str | None, knobs: dict[str, float]):
    """The trainer config for one round: the recipe's DPOConfig with the loss applied
    (``None``: the recipe's own loss, unchanged)."""
    row = spec(name)
    if name is None:
        return copy.deepcopy(training)
    if row.trainer in ("dpo", "sppo"):
        args = copy.deepcopy(training)
        args.loss_type = [row.loss_type]
        args.loss_weights = None
        args.beta = knobs["beta"]
        if "label_smoothing" in knobs:
            args.label_smoothing = knobs["label_smoothing"]
        return args
    if row.trainer == "cpo":
        from trl.experimental.cpo import CPOConfig as Config

        extra = {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": knobs["beta"], "simpo_gamma": knobs["gamma"]}
    else:
        from trl.experimental.orpo import ORPOConfig as Config

        extra = {"beta": knobs["lambda"]}
    base = {k: v for k, v in training.to_dict().items() if k in _fields(Config) and k not in _DPO_ONLY}
    base = {k: v for k, v in base.items() if not k.endswith("_token")}  # hub tokens are masked in to_dict
    return Config(**base, **extra)


def trainer_class(name: str | None):
    """The TRL trainer for ``name`` (DPO and SimPO subclassed to add the optional NLL term,
    DPO once more for soft SPPO)."""
    trainer = spec(name).trainer
    if trainer == "dpo":
        from eva_plugin.solver.nll import NLLDPOTrainer

        return NLLDPOTrainer
    if trainer == "sppo":
        from eva_plugin.solver.sppo import SoftSPPOTrainer

        return SoftSPPOTrainer
    if trainer == "cpo":
        from eva_plugin.solver.nll import NLLCPOTrainer

        return NLLCPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


def trainer_kwargs(name: str | None, knobs: dict[str, float]) -> dict:
    """Extra constructor arguments of ``trainer_class(name)``."""
    return {k: knobs[k] for k in ("nll_alpha", "nll_length_power") if k in knobs}


def pair_columns(name: str | None) -> list[str]:
    """The pair columns the round's trainer reads."""
    return ["prompt", "chosen", "rejected", *spec(name).columns]
