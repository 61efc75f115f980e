"""``accelerate launch -m eva_plugin.dpo --config recipe.yaml``: the Handbook's DPO script, plus EVA.

Without ``creator:`` this trains one plain DPO round on the recipe's preference data,
like the Alignment Handbook's ``scripts/dpo.py``. With ``creator: eva`` (or ``none``) it
runs the iterative loop of ``eva_plugin.loop``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

from eva_plugin.checks import check_generation_room, check_model_paths
from eva_plugin.command_line import parse_command
from eva_plugin.errors import EvaError, WaitTimedOut, one_line
from eva_plugin.recipe import Recipe, build_recipe

logger = logging.getLogger("eva_plugin")


def plain_dpo(recipe: Recipe) -> None:
    """One DPO round over the recipe's preference datasets, saved to ``output_dir``."""
    from trl import DPOTrainer, get_peft_config

    from eva_plugin.data import load_preferences
    from eva_plugin.modeling import model_kwargs
    from eva_plugin.solver.training import check_trained, quiet_train

    training, model_args = recipe.training, recipe.model
    training.model_init_kwargs = {
        **(training.model_init_kwargs or {}),
        **model_kwargs(model_args, model_args.model_name_or_path),  # revision, attention, quantization
        "dtype": model_args.dtype,
        "trust_remote_code": training.trust_remote_code,
    }
    dataset = load_preferences(recipe.datasets, seed=recipe.mixture_seed, mixture_dialect=recipe.mixture_dialect)
    eval_dataset = None
    if recipe.test_split_size:
        split = dataset.train_test_split(test_size=recipe.test_split_size, seed=recipe.mixture_seed)
        dataset, eval_dataset = split["train"], split["test"]
    if training.eval_strategy != "no" and eval_dataset is None:
        training.eval_strategy = "no"
    trainer = DPOTrainer(
        model=model_args.model_name_or_path,
        args=training,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    output = quiet_train(trainer, resume_from_checkpoint=training.resume_from_checkpoint)
    check_trained(trainer, output.global_step)  # NaN weights or no step: nothing saved over output_dir
    trainer.save_model(training.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training.output_dir)
    trainer.accelerator.print(f"saved the DPO policy to {training.output_dir}")


def run_recipe(recipe: Recipe, *, stop_after: str | None = None, overwrite_stale: bool = False) -> None:
    if recipe.creator is None:
        plain_dpo(recipe)
        return
    from eva_plugin import progress
    from eva_plugin.errors import StopAfterStage
    from eva_plugin.loop import EvaLoop
    from eva_plugin.report import print_summary

    progress.configure(recipe.training.disable_tqdm)
    loop = EvaLoop(recipe, stop_after=stop_after, overwrite_stale=overwrite_stale)
    # the libraries loaded so far stay for the whole run: keep them out of the full collections
    # that free each round's sampling models (each took ~0.3 s on CPU)
    gc.freeze()
    try:
        loop.run()
    except StopAfterStage as stop:
        if loop.state.is_main_process:
            print(f"stopped after {stop.args[0]} as asked; rerun without --stop_after to continue")
        return
    finally:
        getattr(sys.modules.get("eva_plugin.generation.vllm_engines"), "release_engines", lambda: None)()
        loop.state.destroy_process_group()  # a no-op with one process
    if loop.state.is_main_process:
        print_summary(recipe.output_dir)
        if recipe.training.push_to_hub:  # as the Handbook's dpo.py: the final policy goes to the hub
            push_policy(recipe, loop.run_facts.store.path(recipe.eva.iterations, "policy"))


def push_policy(recipe: Recipe, folder) -> str:
    """Upload ``folder`` (the last round's policy) to ``hub_model_id`` (default: the output
    folder's name), with the recipe's ``hub_token``, ``hub_private_repo`` and ``hub_revision``;
    the repository's URL."""
    from pathlib import Path

    from huggingface_hub import HfApi

    training = recipe.training
    repo_id = training.hub_model_id or Path(training.output_dir).absolute().name
    api = HfApi(token=training.hub_token)
    repo_id = api.create_repo(repo_id, private=training.hub_private_repo, exist_ok=True).repo_id
    revision = getattr(training, "hub_revision", None)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                      commit_message=f"EVA: the policy after {recipe.eva.iterations} iterations")
    url = f"https://huggingface.co/{repo_id}"
    print(f"pushed the final policy to {url}")
    return url


def setup_logging(recipe: Recipe | None = None) -> None:
    """Log the Handbook way: a stdout handler; once the recipe is read, one level per process.

    The main process logs at the recipe's ``log_level`` (``passive``: INFO for ``eva_plugin``,
    the libraries' own default for transformers / datasets), the others at ``log_level_replica``
    (WARNING by default), for ``eva_plugin``, transformers and datasets alike. Library
    deprecation warnings are left as they are.
    """
    if recipe is None:
        from eva_plugin.secrets import RedactingFilter

        handler = logging.StreamHandler(sys.stdout)
        handler.addFilter(RedactingFilter())  # a registered secret (an API key) never reaches the log
        logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S", handlers=[handler])
        logger.setLevel(logging.INFO)  # the recipe's notes, before its own level is known
        return
    import datasets
    import transformers

    training = recipe.training
    level = training.get_process_log_level()
    passive_main = training.log_level == "passive" and training.should_log
    logger.setLevel(logging.INFO if passive_main else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: list[str] | None = None, *, prog: str = "python -m eva_plugin.dpo --config RECIPE") -> int:
    """Parse the command line, build the recipe, run it; user errors are one line, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = parse_command(argv, prog)
        if command.help or command.help_trl:
            from eva_plugin.docs import help_text, trl_help

            print(help_text(prog) if command.help else trl_help(), end="")
            return 0
        if command.config is None:
            raise EvaError("no recipe: pass RECIPE (`eva run RECIPE`) or --config PATH; --help lists every option")
        setup_logging()
        recipe = build_recipe(command)
        check_stop_after(recipe, command.stop_after)
        check_model_paths(recipe.model.model_name_or_path or None, recipe.eva, recipe.creator,  # before any loads
                          trust_remote_code=bool(recipe.training.trust_remote_code))
        check_generation_room(recipe.model.model_name_or_path or None, recipe.eva, recipe.creator)
        setup_logging(recipe)
        run_recipe(recipe, stop_after=command.stop_after, overwrite_stale=command.overwrite_stale)
    except EvaError as err:
        report_error(err)
        return 2
    except KeyboardInterrupt:  # finished stages are on disk, the unfinished one is rebuilt on resume
        if first_on_node():
            print("eva: interrupted; run the same command to resume (finished stages are kept)", file=sys.stderr)
        return 130
    return 0


def report_error(err: EvaError) -> None:
    """``err`` as one line on stderr: from the first process of each node (every process fails alike), except a wait
    that timed out, which only the process that waited knows about."""
    if first_on_node() or isinstance(err, WaitTimedOut):
        print(f"eva: error: {node_prefix()}{one_line(err)}", file=sys.stderr)


def first_on_node() -> bool:
    """Whether this is the first process of its node (``LOCAL_RANK`` 0; the only process without a
    launcher): the one that prints a run's error. On one node that is the main process; on several,
    each node's log says why it stopped, also when only that node failed (a model path that exists
    on another node only)."""
    return os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")).strip() in ("", "0")


def node_prefix() -> str:
    """``on host <name>: `` under a launch over several nodes (their logs are often merged), else nothing."""
    world, local = os.environ.get("WORLD_SIZE", "1"), os.environ.get("LOCAL_WORLD_SIZE", "")
    if not local or world == local:
        return ""
    import socket

    return f"on host {socket.gethostname()}: "


def check_stop_after(recipe: Recipe, stop_after: str | None) -> None:
    """``--stop_after`` names a stage this run has (``stage_list``): ``iter_T/STAGE``, or ``STAGE`` for its
    first run in a round; anything else is refused with the names, before anything runs."""
    if stop_after is None:
        return
    from eva_plugin.errors import RecipeError

    if recipe.creator is None:
        raise RecipeError("--stop_after needs an EVA run (`creator: eva` or `none`); a plain DPO round has no stages")
    from eva_plugin.stage_list import plan_of

    paths = plan_of(recipe).stage_paths(recipe.eva.iterations)
    names = list(dict.fromkeys(p.split("/", 1)[1] for p in paths if not p.startswith("iter_0/")))
    if stop_after not in paths and stop_after not in names:
        setup = [p for p in paths if p.startswith("iter_0/")]
        raise RecipeError(f"--stop_after {stop_after!r} is not a stage of this run; use iter_T/STAGE "
                          f"(T = 1..{recipe.eva.iterations}) or STAGE, with STAGE one of {', '.join(names)}; "
                          f"or {', '.join(setup)}")


if __name__ == "__main__":
    sys.exit(main())
