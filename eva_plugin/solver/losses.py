"""The preference losses of the papers, each with its own knobs and the EVA paper's defaults.

| loss    | TRL trainer                       | knobs (paper default, EVA Table 6)     |
|---------|-----------------------------------|----------------------------------------|
| `dpo`   | DPOTrainer, `loss_type: sigmoid`  | beta 0.05, label_smoothing 0           |
(``nll_alpha``, default 0, adds α · length-normalised NLL of the chosen response for
dpo, ipo, sppo and simpo; see ``eva_plugin.solver.nll``.)
| `ipo`   | DPOTrainer, `loss_type: ipo`      | beta 0.05 (not in the paper: DPO's)    |
| `sppo`  | DPOTrainer, `loss_type: sppo_hard`| beta 0.001                             |
| `simpo` | experimental CPOTrainer, `simpo`, `cpo_alpha: 0` | beta 10, gamma 5        |
| `orpo`  | experimental ORPOTrainer          | lambda 0.5 (TRL calls it `beta`)       |

TRL only rejects a bad loss at the first training step; here it fails at parse time.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from eva_plugin.errors import RecipeError


@dataclass(frozen=True)
class Loss:
    trainer: str  # dpo | cpo | orpo
    loss_type: str | None
    knobs: dict[str, float] = field(default_factory=dict)
    uses_reference: bool = True


LOSSES: dict[str, Loss] = {
    "dpo": Loss("dpo", "sigmoid", {"beta": 0.05, "label_smoothing": 0.0, "nll_alpha": 0.0}),
    "ipo": Loss("dpo", "ipo", {"beta": 0.05, "nll_alpha": 0.0}),
    "sppo": Loss("dpo", "sppo_hard", {"beta": 0.001, "nll_alpha": 0.0}),
    "simpo": Loss("cpo", "simpo", {"beta": 10.0, "gamma": 5.0, "nll_alpha": 0.0}, uses_reference=False),
    "orpo": Loss("orpo", None, {"lambda": 0.5}, uses_reference=False),
}


def loss_knobs(name: str, loss_args: dict, recipe_beta: float | None = None) -> dict[str, float]:
    """The knobs of ``name``: paper defaults, then the recipe's own ``beta`` (DPO family),
    then ``eva.loss_args``. Unknown losses and foreign knobs fail with the valid choices."""
    if name not in LOSSES:
        raise RecipeError(f"unknown eva.loss {name!r}; known: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    foreign = sorted(set(loss_args) - set(spec.knobs))
    if foreign:
        raise RecipeError(f"eva.loss_args {', '.join(foreign)} do not belong to loss {name!r}; "
                          f"it takes: {', '.join(spec.knobs)}")
    knobs = dict(spec.knobs)
    if recipe_beta is not None and spec.trainer == "dpo":
        knobs["beta"] = float(recipe_beta)
    knobs.update({k: float(v) for k, v in loss_args.items()})
    return knobs


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


#: DPOConfig keys that belong to the DPO loss, not carried over to CPO/ORPO configs.
_DPO_ONLY = {"loss_type", "loss_weights", "beta", "label_smoothing"}


def round_config(training, name: str, knobs: dict[str, float]):
    """The trainer config for one round: the recipe's DPOConfig with the loss applied."""
    spec = LOSSES[name]
    if spec.trainer == "dpo":
        args = copy.deepcopy(training)
        args.loss_type = [spec.loss_type]
        args.loss_weights = None
        args.beta = knobs["beta"]
        if "label_smoothing" in knobs:
            args.label_smoothing = knobs["label_smoothing"]
        return args
    if spec.trainer == "cpo":
        from trl.experimental.cpo import CPOConfig as Config

        extra = {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": knobs["beta"], "simpo_gamma": knobs["gamma"]}
    else:
        from trl.experimental.orpo import ORPOConfig as Config

        extra = {"beta": knobs["lambda"]}
    base = {k: v for k, v in training.to_dict().items() if k in _fields(Config) and k not in _DPO_ONLY}
    base = {k: v for k, v in base.items() if not k.endswith("_token")}  # hub tokens are masked in to_dict
    return Config(**base, **extra)


def trainer_class(name: str):
    """The TRL trainer for ``name`` (DPO and SimPO subclassed to add the optional NLL term)."""
    trainer = LOSSES[name].trainer
    if trainer == "dpo":
        from eva_plugin.solver.nll import NLLDPOTrainer

        return NLLDPOTrainer
    if trainer == "cpo":
        from eva_plugin.solver.nll import NLLCPOTrainer

        return NLLCPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


def trainer_kwargs(name: str, knobs: dict[str, float]) -> dict:
    """Extra constructor arguments of ``trainer_class(name)``."""
    return {"nll_alpha": knobs["nll_alpha"]} if "nll_alpha" in knobs else {}
