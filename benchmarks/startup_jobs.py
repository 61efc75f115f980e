"""Child jobs for ``benchmarks/startup.py`` (each run as its own subprocess, timed from outside).

    python benchmarks/startup_jobs.py trl --policy P --reward R --prompts F --out D [...]
        the tiny online-DPO job with TRL's ``OnlineDPOTrainer`` (trl.experimental.online_dpo)
    python benchmarks/startup_jobs.py imports cli|dpo ARG...
        an eva command (``eva ARG...`` or ``python -m eva_plugin.dpo ARG...``) that records every
        third-party import made from an eva_plugin frame: call site, module, seconds (nested)
    python benchmarks/startup_jobs.py eva-phases RECIPE
        ``eva run RECIPE`` with a phase timer: exclusive seconds per phase (imports, recipe
        parse, model loads, generation, scoring, dataset save/load, trainer construction, ...)

Both print one ``PHASES {json}`` line at the end. Only the standard library is imported at
module level, so a child costs nothing beyond the job it runs.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import importlib
import json
import sys
import time

T0 = time.perf_counter()


# ---- phase timer -------------------------------------------------------------------------------
class Phases:
    """Exclusive wall time per phase: a nested phase's seconds are not counted in its parent.

    Imports are a phase of their own (outermost ``import`` statement or ``importlib.import_module``
    call), attributed as ``import: <phase it happened in>``, so a recipe parse that spends 5 s
    importing TRL shows as ``import: recipe parse`` 5 s and ``recipe parse`` 0.05 s.
    """

    def __init__(self) -> None:
        self.stack: list[list] = []  # [name, started, child_seconds]
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def enter(self, name: str) -> None:
        if "{parent}" in name:
            name = name.format(parent=self.current())
        self.stack.append([name, time.perf_counter(), 0.0])

    def leave(self) -> None:
        name, started, children = self.stack.pop()
        spent = time.perf_counter() - started
        self.seconds[name] = self.seconds.get(name, 0.0) + spent - children
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += spent

    def current(self) -> str:
        for name, *_ in reversed(self.stack):
            if not name.startswith("import: "):
                return name
        return "top level"

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        timed.__phase_wrapped__ = True
        return timed


PHASES = Phases()

#: (module, attribute path, phase). A module-level function is also re-bound in every eva_plugin
#: module that imported it by name (``from eva_plugin.modeling import load_causal_lm``).
TARGETS = [
    ("eva_plugin.dpo", "run", "run (outside the phases below)"),
    ("eva_plugin.recipe", "load_recipe", "recipe parse"),
    ("eva_plugin.plugins", "plugin_manager", "plugin registry"),
    ("eva_plugin.plugins", "registry", "plugin registry"),
    ("eva_plugin.loop", "EvaLoop.__init__", "loop setup (accelerate PartialState)"),
    ("eva_plugin.loop", "EvaLoop.seed_prompts", "seed prompts (load + shuffle)"),
    ("eva_plugin.data", "load_prompts", "read prompt files"),
    ("eva_plugin.modeling", "load_causal_lm", "model load ({parent})"),
    ("eva_plugin.modeling", "load_tokenizer", "tokenizer load ({parent})"),
    ("eva_plugin.modeling", "release", "release models (gc.collect)"),
    ("eva_plugin.generation.transformers_backend", "TransformersBackend.__init__", "sampling backend setup"),
    ("eva_plugin.generation.transformers_backend", "TransformersBackend.generate", "generation"),
    ("eva_plugin.rewards.sequence_classification", "SequenceClassificationReward.__init__",
     "reward model setup (incl. its from_pretrained)"),
    ("eva_plugin.rewards.sequence_classification", "SequenceClassificationReward.score", "scoring"),
    ("eva_plugin.artifacts", "load_from_disk", "dataset load_from_disk"),
    ("datasets.arrow_dataset", "Dataset.save_to_disk", "dataset save_to_disk"),
    ("eva_plugin.artifacts", "publish_dir", "publish artifact"),
    ("eva_plugin.solver.training", "train_round", "train round (other)"),
    ("eva_plugin.solver.training", "parameter_checksum", "reference checksum + logp probe"),
    ("eva_plugin.solver.training", "sequence_logp", "reference checksum + logp probe"),
    ("trl.trainer.dpo_trainer", "DPOTrainer.__init__", "trainer construction"),
    ("transformers.trainer", "Trainer.train", "training"),
    ("transformers.trainer", "Trainer.save_model", "save checkpoint"),
    ("eva_plugin.report", "print_summary", "summary"),
    ("eva_plugin.loop", "EvaLoop.write_run_manifest", "summary"),
    # the TRL job's own pieces
    ("trl.experimental.online_dpo.online_dpo_trainer", "OnlineDPOTrainer.__init__", "trainer construction"),
    ("trl.experimental.online_dpo.online_dpo_trainer", "OnlineDPOTrainer._generate", "generation"),
    ("trl.experimental.online_dpo.online_dpo_trainer", "OnlineDPOTrainer._calculate_rewards_from_functions",
     "scoring"),
]
_done: set[tuple[str, str]] = set()


def _patch_loaded() -> None:
    """Wrap every target whose module is loaded now (called after each outermost import)."""
    for module_name, attr, phase in TARGETS:
        if (module_name, attr) in _done or module_name not in sys.modules:
            continue
        module = sys.modules[module_name]
        owner_name, _, name = attr.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        original = owner.__dict__.get(name) if owner_name else getattr(module, name, None)
        if original is None:
            continue
        _done.add((module_name, attr))
        if getattr(original, "__phase_wrapped__", False):
            continue
        timed = PHASES.wrap(phase, original)
        if owner_name:
            setattr(owner, name, timed)
            continue
        setattr(module, name, timed)
        if getattr(original, "cache_clear", None):  # functools.cache: keep the cache reachable
            timed.cache_clear = original.cache_clear
        for other_name, other in list(sys.modules.items()):
            if other_name.startswith("eva_plugin") and other is not None and getattr(other, name, None) is original:
                setattr(other, name, timed)
    # functions imported by name into modules loaded after the target was patched
    for module_name, attr, _ in TARGETS:
        if "." in attr or (module_name, attr) not in _done:
            continue
        timed = getattr(sys.modules[module_name], attr)
        original = getattr(timed, "__wrapped__", None)
        for other_name, other in list(sys.modules.items()):
            if other_name.startswith("eva_plugin") and other is not None and getattr(other, attr, None) is original:
                setattr(other, attr, timed)


def install_import_timer() -> None:
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def outermost(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if PHASES.stack and PHASES.stack[-1][0].startswith("import: "):
                return fn(*args, **kwargs)
            before = len(sys.modules)
            PHASES.enter(f"import: {PHASES.current()}")
            try:
                return fn(*args, **kwargs)
            finally:
                PHASES.leave()
                if len(sys.modules) != before:
                    _patch_loaded()

        return timed

    builtins.__import__ = outermost(real_import)
    importlib.import_module = outermost(real_import_module)


def report(extra: dict | None = None) -> None:
    while PHASES.stack:
        PHASES.leave()
    total = time.perf_counter() - T0
    out = {"in_process_seconds": round(total, 3), "phases": {k: round(v, 3) for k, v in PHASES.seconds.items()},
           "calls": PHASES.calls, **(extra or {})}
    print("PHASES " + json.dumps(out), flush=True)


# ---- who imports what ----------------------------------------------------------------------------
def import_edges(entry: str, argv: list[str]) -> int:
    """Run an eva command, timing each import of a non-eva_plugin module made from eva_plugin code
    (module level or inside a function) that loads new modules; print them, slowest first."""
    real_import, real_import_module = builtins.__import__, importlib.import_module
    edges: dict[tuple[str, str], list[float]] = {}

    def caller(depth: int) -> str | None:
        frame = sys._getframe(depth)
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("eva_plugin"):
            return None
        where = "module level" if frame.f_code.co_name == "<module>" else f"{frame.f_code.co_name}()"
        return f"{name}:{frame.f_lineno} {where}"

    def edge(fn, name_of):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = name_of(*args, **kwargs)
            site = caller(2) if name and not name.startswith((".", "eva_plugin")) else None
            if site is None:
                return fn(*args, **kwargs)
            before, started = len(sys.modules), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if len(sys.modules) != before:
                    spent = time.perf_counter() - started
                    label = name
                    fromlist = args[3] if len(args) > 3 else kwargs.get("fromlist")
                    if fromlist:
                        label = f"{name} ({', '.join(fromlist)})"
                    entry_ = edges.setdefault((site, label), [0.0, 0])
                    entry_[0] += spent
                    entry_[1] += len(sys.modules) - before

        return timed

    builtins.__import__ = edge(real_import, lambda name, *a, **k: name if (a[3] if len(a) > 3 else
                                                                         k.get("level", 0)) == 0 else "." + name)
    importlib.import_module = edge(real_import_module, lambda name, package=None: name)
    rc = 0
    try:
        if entry == "dpo":
            from eva_plugin import dpo

            rc = dpo.main(argv)
        else:
            from eva_plugin import cli

            rc = cli.main(argv)
    except SystemExit as exit_:  # --help
        rc = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        builtins.__import__, importlib.import_module = real_import, real_import_module
        rows = sorted(((v[0], v[1], site, mod) for (site, mod), v in edges.items()), reverse=True)
        total = time.perf_counter() - T0
        print("PHASES " + json.dumps({"in_process_seconds": round(total, 3), "edges": rows}), flush=True)
    return rc


# ---- eva run under the phase timer -------------------------------------------------------------
def eva_phases(recipe: str) -> int:
    install_import_timer()
    PHASES.enter("cli")
    from eva_plugin import cli

    try:
        rc = cli.main(["run", recipe])
    finally:
        PHASES.leave()
        report()
    return rc


# ---- TRL's OnlineDPOTrainer on the same work -----------------------------------------------------
def trl_job(args: argparse.Namespace) -> int:
    if args.phases:
        install_import_timer()
    import json as _json

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    with open(args.prompts) as fh:
        prompts = [_json.loads(line)["prompt"] for line in fh if line.strip()][: args.num_prompts]
    # conversational, like eva's user turn: both render the same chat template
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    config = OnlineDPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=args.learning_rate,
        beta=[args.beta],
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        dataloader_pin_memory=False,
        model_init_kwargs={"dtype": "float32", "device_map": None},
    )
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    trainer = OnlineDPOTrainer(model=args.policy, reward_funcs=args.reward, args=config, train_dataset=dataset,
                               processing_class=tokenizer)
    output = trainer.train()
    trainer.save_model(args.out)
    tokenizer.save_pretrained(args.out)
    extra = {"steps": output.global_step, "train_loss": output.training_loss, "prompts": len(prompts)}
    if args.phases:
        report(extra)
    else:
        print("PHASES " + json.dumps({"in_process_seconds": round(time.perf_counter() - T0, 3), **extra}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    i = sub.add_parser("imports")
    i.add_argument("entry", choices=["cli", "dpo"])
    i.add_argument("argv", nargs=argparse.REMAINDER)
    e = sub.add_parser("eva-phases")
    e.add_argument("recipe")
    t = sub.add_parser("trl")
    t.add_argument("--policy", required=True)
    t.add_argument("--reward", required=True)
    t.add_argument("--prompts", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--num-prompts", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--learning-rate", type=float, default=1e-4)
    t.add_argument("--beta", type=float, default=0.1)
    t.add_argument("--max-new-tokens", type=int, default=16)
    t.add_argument("--max-length", type=int, default=512)
    t.add_argument("--temperature", type=float, default=0.9)
    t.add_argument("--top-p", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--phases", action="store_true", help="time phases (imports, generation, ...) too")
    args = parser.parse_args()
    if args.job == "imports":
        return import_edges(args.entry, args.argv)
    if args.job == "eva-phases":
        return eva_phases(args.recipe)
    return trl_job(args)


if __name__ == "__main__":
    sys.exit(main())
