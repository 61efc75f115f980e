"""Start-up cost of the ``eva`` commands, and a tiny online-DPO job against TRL's OnlineDPOTrainer.

    python benchmarks/startup.py                        # everything, median of 3 runs each
    python benchmarks/startup.py --repeats 1 --skip profile
    python benchmarks/startup.py --src /tmp/eva-head    # measure another checkout (PYTHONPATH)

Prints numbers; it is not a test. Every time is the wall time of a whole subprocess, the
interpreter included, with ``HF_HUB_OFFLINE=1``.

1. **Fast commands** against the 1.5 s target: ``eva plugins``, ``eva run RECIPE --help``,
   ``python -m eva_plugin.dpo --help``, and two parse-time errors (``eva run`` on a recipe
   with an unknown ``eva.proxy``, and on a missing file).
2. **The tiny job both ways**: a random tiny Llama policy and a tiny Llama reward model
   (``eva_plugin.testing``), 64 prompts x 2 samples, one round, ``max_new_tokens`` 16,
   temperature 0.9, top-p 1.0, 8 prompts per generate call, train batch 8 (8 optimizer steps),
   learning rate 1e-4, beta 0.1, ``max_length`` 512, seed 42, float32 on CPU, no gradient
   checkpointing, the trained policy saved at the end.
   (a) ``eva run recipe.yaml`` with ``creator: none``, ``eva.iterations: 1``,
   ``eva.solver_samples: 2``; (b) ``benchmarks/startup_jobs.py trl``: TRL's
   ``trl.experimental.online_dpo.OnlineDPOTrainer`` with the reward model's path as
   ``reward_funcs``, one epoch over the same 64 prompts (conversational, same chat template).
   Prints both medians and the ratio eva/TRL.
3. **Where ``eva run`` spends its time**: ``python -X importtime`` on each command path
   (the heavy packages and the eva_plugin module that pulls each in) and a per-phase wall-time
   breakdown of the tiny job (``startup_jobs.py eva-phases``: imports per phase, recipe parse,
   model loads, generation, scoring, dataset save/load, trainer construction, training, ...),
   with TRL's job broken down the same way; and standalone ``python -c "import X"`` costs, incl.
   what interpreter finalization adds once TRL is loaded (normal exit vs ``os._exit``).
   The child jobs live in ``benchmarks/startup_jobs.py``.

What differs between (a) and (b), as far as TRL allows:

- order of work: eva samples all 128 responses, scores them, then trains 8 steps of DPO on
  the 64 best/worst pairs; OnlineDPOTrainer interleaves per step (sample 8 prompts x 2 with the
  *current* policy, score, one DPO step), so its later samples come from an updated policy;
- sampling: eva draws with its own per-(prompt, sample) seeded Gumbel-max sampler over greedy
  ``generate``; TRL uses ``generate(do_sample=True)`` on one global stream (same temperature,
  top-p, token limit, batch of 8 prompts x 2 rows);
- pairs: eva drops ties / identical responses (a random tiny model gives none, so 64 pairs
  and 8 steps both ways — the script prints eva's pair count); TRL orders each pair by reward
  and never drops one;
- reference: eva loads the reference from disk (a second ``from_pretrained`` of the same
  checkpoint); TRL deep-copies the policy. DPOTrainer tokenizes the pairs and computes
  chosen/rejected log-probs on prompt+response sequences; OnlineDPO works on the token ids it
  generated (no re-tokenization);
- eva also writes its stage artifacts (``save_to_disk`` + manifests), a reference checksum
  and a log-prob probe, and prints a summary; TRL writes only the final checkpoint;
- reward model scoring: eva scores 128 texts in batches of 16 (``reward_options.batch_size``),
  TRL scores 16 per step inside the training loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.5  # seconds, for the fast commands
TOPICS = ["the sea", "a python function", "the moon", "remote work", "climate policy", "a french sentence",
          "fibonacci numbers", "the sky", "a short poem", "language learning", "energy", "an equation"]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "distilabel", "pyarrow", "pandas",
         "numpy", "scipy", "sklearn", "tokenizers", "safetensors", "huggingface_hub", "requests", "yaml",
         "pluggy", "jinja2", "fsspec", "multiprocess", "aiohttp", "networkx", "sympy", "bitsandbytes", "deepspeed",
         "vllm", "openai", "pydantic", "rich", "tqdm", "psutil", "nltk", "torchvision", "PIL")


# ---- running things ------------------------------------------------------------------------------
def child_env(src: str | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: str,
          expect: int | None = 0) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if expect is not None and proc.returncode != expect:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        print(f"  !! {' '.join(cmd[-3:])}: exit {proc.returncode}, expected {expect}\n{tail}", file=sys.stderr)
    return wall, proc


def eva_command() -> list[str]:
    script = Path(sys.executable).with_name("eva")
    return [str(script)] if script.exists() else [sys.executable, "-m", "eva_plugin.cli"]


def phases_of(proc: subprocess.CompletedProcess) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PHASES "):
            return json.loads(line[len("PHASES "):])
    return {}


# ---- the tiny setup ------------------------------------------------------------------------------
def setup(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Path]:
    """Tiny policy, reward model, 64 prompts and three recipes under ``work``."""
    paths = {"policy": work / "policy", "reward": work / "reward", "prompts": work / "prompts.jsonl"}
    if not (paths["policy"] / "config.json").exists() or not (paths["reward"] / "config.json").exists():
        code = ("import sys; from eva_plugin.testing import make_tiny_policy, make_tiny_reward_model; "
                "make_tiny_policy(sys.argv[1]); make_tiny_reward_model(sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, str(paths["policy"]), str(paths["reward"])], env=env, check=True,
                       capture_output=True)
    with open(paths["prompts"], "w") as fh:
        for i in range(args.prompts):
            fh.write(json.dumps({"prompt": f"write {i % 5 + 1} sentences about {TOPICS[i % len(TOPICS)]} ({i})"})
                     + "\n")
    recipe = {
        "model_name_or_path": str(paths["policy"]),
        "dtype": "float32",
        "dataset_mixture": {"datasets": [{"id": str(paths["prompts"]), "split": "train"}], "seed": 0},
        "bf16": False,
        "beta": args.beta,
        "learning_rate": args.learning_rate,
        "max_length": 512,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "output_dir": str(work / "eva-out"),
        "seed": 42,
        "creator": "none",
        "eva": {
            "iterations": 1,
            "solver_samples": 2,
            "prompts_per_iteration": args.prompts,
            "reward_model": str(paths["reward"]),
            "reward_options": {"batch_size": 2 * args.batch_size},
            "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                           "temperature": 0.9, "top_p": 1.0},
        },
    }
    paths["recipe"] = work / "recipe.yaml"
    paths["recipe"].write_text(json.dumps(recipe, indent=1))  # JSON is YAML
    bad = json.loads(json.dumps(recipe))
    bad["eva"]["proxy"] = "no_such_proxy"
    bad["output_dir"] = str(work / "bad-out")
    paths["bad_recipe"] = work / "bad_proxy.yaml"
    paths["bad_recipe"].write_text(json.dumps(bad, indent=1))
    paths["missing"] = work / "no_such_recipe.yaml"
    return paths


# ---- 1. fast commands ----------------------------------------------------------------------------
def fast_commands(paths: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    eva = eva_command()
    return [
        ("eva plugins", [*eva, "plugins"], 0),
        ("eva run RECIPE --help", [*eva, "run", str(paths["recipe"]), "--help"], 0),
        ("python -m eva_plugin.dpo --help", [sys.executable, "-m", "eva_plugin.dpo", "--help"], 0),
        ("eva run BAD (unknown eva.proxy)", [*eva, "run", str(paths["bad_recipe"])], 2),
        ("eva run MISSING.yaml", [*eva, "run", str(paths["missing"])], 2),
    ]


def bench_fast(paths, env, work, repeats) -> dict[str, float]:
    print(f"\n== 1. fast commands: wall seconds, median of {repeats} (target <= {TARGET} s) ==")
    baseline = [statistics.median(timed([sys.executable, "-c", "pass"], env, str(work))[0] for _ in range(repeats))]
    print(f"  {'python -c pass (interpreter floor)':<40} {baseline[0]:6.2f}")
    medians = {}
    for label, cmd, rc in fast_commands(paths):
        walls = [timed(cmd, env, str(work), expect=rc)[0] for _ in range(repeats)]
        medians[label] = med = statistics.median(walls)
        runs = " ".join(f"{w:.2f}" for w in walls)
        print(f"  {label:<40} {med:6.2f}  {'ok ' if med <= TARGET else 'OVER'}  (runs: {runs})")
    return medians


# ---- 2. the tiny job both ways ---------------------------------------------------------------------
def trl_command(paths, args, out: Path, phases: bool = False) -> list[str]:
    cmd = [sys.executable, str(HERE / "startup_jobs.py"), "trl", "--policy", str(paths["policy"]),
           "--reward", str(paths["reward"]), "--prompts", str(paths["prompts"]), "--out", str(out),
           "--num-prompts", str(args.prompts), "--batch-size", str(args.batch_size),
           "--learning-rate", str(args.learning_rate), "--beta", str(args.beta),
           "--max-new-tokens", str(args.max_new_tokens), "--max-length", "512", "--temperature", "0.9",
           "--top-p", "1.0", "--seed", "42"]
    return [*cmd, "--phases"] if phases else cmd


def eva_pairs(work: Path) -> str:
    manifest = work / "eva-out" / "iter_1" / "manifest.json"
    try:
        stages = json.loads(manifest.read_text())["stages"]
        return f"{stages['pairs'].get('rows')} pairs, {stages['policy'].get('steps')} steps"
    except (OSError, KeyError, ValueError):
        return "pairs: ?"


def bench_tiny(paths, env, work, args) -> tuple[float, float]:
    print(f"\n== 2. tiny online-DPO job ({args.prompts} prompts x 2 samples, one round): wall seconds, "
          f"median of {args.repeats}, runs interleaved ==")
    eva_walls, trl_walls = [], []
    for _ in range(args.repeats):
        shutil.rmtree(work / "eva-out", ignore_errors=True)
        wall, _ = timed([*eva_command(), "run", str(paths["recipe"])], env, str(work))
        eva_walls.append(wall)
        shutil.rmtree(work / "trl-out", ignore_errors=True)
        wall, proc = timed(trl_command(paths, args, work / "trl-out"), env, str(work))
        trl_walls.append(wall)
    trl_info = phases_of(proc)
    eva_med, trl_med = statistics.median(eva_walls), statistics.median(trl_walls)
    print(f"  {'eva run (creator: none)':<40} {eva_med:6.2f}  (runs: {' '.join(f'{w:.2f}' for w in eva_walls)}; "
          f"{eva_pairs(work)})")
    print(f"  {'TRL OnlineDPOTrainer':<40} {trl_med:6.2f}  (runs: {' '.join(f'{w:.2f}' for w in trl_walls)}; "
          f"{trl_info.get('prompts', '?')} prompts, {trl_info.get('steps', '?')} steps)")
    ratio = eva_med / trl_med
    pairwise = statistics.median(e / t for e, t in zip(eva_walls, trl_walls))
    print(f"  ratio eva/TRL: {ratio:.2f} (median of per-pair ratios {pairwise:.2f}; target <= 1.0)")
    return eva_med, trl_med


# ---- 3. profiles ---------------------------------------------------------------------------------
def parse_importtime(stderr: str) -> list[dict]:
    """``-X importtime`` lines as nodes with their parent (the lines come children first)."""
    nodes: list[dict] = []
    pending: list[dict] = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        node = {"self": int(m[1]) / 1e6, "cum": int(m[2]) / 1e6, "depth": len(m[3]) // 2, "name": m[4],
                "parent": None}
        while pending and pending[-1]["depth"] > node["depth"]:
            pending.pop()["parent"] = node
        pending.append(node)
        nodes.append(node)
    return nodes


def puller(node: dict) -> str:
    """The nearest eva_plugin module whose import pulled ``node`` in, else its parent and root import."""
    p, chain = node["parent"], []
    while p is not None:
        if p["name"].startswith("eva_plugin"):
            return p["name"]
        chain.append(p["name"])
        p = p["parent"]
    if not chain:
        return "(a run-time import)"
    return f"{chain[0]}" + (f" < ... < {chain[-1]}" if len(chain) > 1 else "")


def import_offenders(stderr: str, limit: int) -> list[tuple[float, str, str]]:
    """Heavy third-party packages, first import of each top-level name, with who pulled them in."""
    rows = []
    for node in parse_importtime(stderr):
        top = node["name"].split(".")[0]
        if top.startswith("eva_plugin") or top not in HEAVY or node["cum"] < 0.05:
            continue
        parent_top = node["parent"]["name"].split(".")[0] if node["parent"] else None
        if parent_top == top:
            continue  # a submodule of the same package: counted in its package's line
        rows.append((node["cum"], node["name"], puller(node)))
    rows.sort(reverse=True)
    return rows[:limit]


STANDALONE = [
    ("pluggy + yaml (what parsing needs)", "import pluggy, yaml"),
    ("numpy", "import numpy"),
    ("torch", "import torch"),
    ("transformers (lazy top level)", "import transformers"),
    ("transformers.TrainingArguments", "from transformers import TrainingArguments"),
    ("datasets", "import datasets"),
    ("accelerate (PartialState)", "from accelerate import PartialState"),
    ("peft", "import peft"),
    ("trl: DPOConfig, ModelConfig, ScriptArguments, TrlParser",
     "from trl import DPOConfig, ModelConfig, ScriptArguments, TrlParser"),
    ("trl.DPOTrainer", "from trl import DPOTrainer"),
    ("trl.experimental.online_dpo", "from trl.experimental.online_dpo import OnlineDPOTrainer"),
    ("trl.DPOTrainer + datasets, normal exit", "from trl import DPOTrainer; import datasets"),
    ("trl.DPOTrainer + datasets, then os._exit(0): no interpreter finalization",
     "from trl import DPOTrainer; import datasets, os; os._exit(0)"),
    ("eva_plugin.config (EvaArguments)", "import eva_plugin.config"),
    ("eva_plugin plugin registry, all kinds",
     "from eva_plugin import plugins; [plugins.registry(k) for k in plugins.KINDS]"),
    ("eva_plugin.loop", "import eva_plugin.loop"),
]


def profile_imports(paths, env, work, args) -> None:
    print("\n== 3a. imports on each command path ==")
    print("  call sites: every import of a third-party module made from eva_plugin code that loaded new "
          "modules,\n  with the seconds it took (nested imports included; a package counts where it is first "
          "imported).\n  packages: `python -X importtime`, heavy packages by cumulative seconds, with the module "
          "that imported each.")
    paths_to_profile = [
        ("eva plugins", ["cli", "plugins"], 0),
        ("eva run RECIPE --help", ["cli", "run", str(paths["recipe"]), "--help"], 0),
        ("python -m eva_plugin.dpo --help", ["dpo", "--help"], 0),
        ("eva run BAD (unknown eva.proxy)", ["cli", "run", str(paths["bad_recipe"])], 2),
        ("eva run MISSING.yaml", ["cli", "run", str(paths["missing"])], 2),
        ("eva run RECIPE (tiny job)", ["cli", "run", str(paths["recipe"])], 0),
    ]
    eva_code = "import sys; from eva_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
    dpo_code = "import sys; from eva_plugin.dpo import main; sys.exit(main(sys.argv[1:]))"
    for label, (entry, *argv), rc in paths_to_profile:
        shutil.rmtree(work / "eva-out", ignore_errors=True)
        _, proc = timed([sys.executable, str(HERE / "startup_jobs.py"), "imports", entry, *argv], env, str(work),
                        expect=rc)
        edges = phases_of(proc).get("edges", [])
        shutil.rmtree(work / "eva-out", ignore_errors=True)
        code = dpo_code if entry == "dpo" else eva_code
        wall, proc = timed([sys.executable, "-X", "importtime", "-c", code, *argv], env, str(work), expect=rc)
        nodes = parse_importtime(proc.stderr)
        own = sum(n["self"] for n in nodes if n["name"].startswith("eva_plugin"))
        total = sum(n["cum"] for n in nodes if n["parent"] is None)
        print(f"\n  -- {label}: wall {wall:.2f} s under -X importtime, imports {total:.2f} s "
              f"(eva_plugin's own modules, self: {own:.2f} s)")
        for sec, count, site, module in edges[: args.top]:
            if sec >= 0.02:
                print(f"    {sec:6.2f}  {site:<46} imports {module}  [{count} modules]")
        for cum, name, by in import_offenders(proc.stderr, args.top):
            print(f"    {cum:6.2f}    package {name:<40} <- {by}")
    print(f"\n  -- standalone import costs (python -c, wall, median of {args.repeats}; compare the interpreter "
          "floor above)")
    for label, code in STANDALONE:
        walls = [timed([sys.executable, "-c", code], env, str(work))[0] for _ in range(args.repeats)]
        print(f"    {statistics.median(walls):6.2f}  {label}")


def show_phases(title: str, info: dict, wall: float) -> None:
    phases = info.get("phases", {})
    inside = info.get("in_process_seconds", 0.0)
    imports = sum(v for k, v in phases.items() if k.startswith("import: "))
    print(f"\n  -- {title}: wall {wall:.2f} s = interpreter start, exit (finalization) and the job module's import "
          f"{wall - inside:.2f} s + in process {inside:.2f} s (of which imports {imports:.2f} s)")
    rows = sorted(phases.items(), key=lambda kv: -kv[1])
    other = inside - sum(phases.values())
    for name, sec in rows:
        if sec >= 0.005:
            print(f"    {sec:6.2f}  {name}  (x{info['calls'].get(name, '?')})")
    print(f"    {other:6.2f}  (not in any phase)")


def profile_phases(paths, env, work, args) -> None:
    print("\n== 3b. wall-time breakdown of the tiny job (exclusive seconds per phase, one run each; "
          "'import: X' = imports first done inside phase X) ==")
    shutil.rmtree(work / "eva-out", ignore_errors=True)
    wall, proc = timed([sys.executable, str(HERE / "startup_jobs.py"), "eva-phases", str(paths["recipe"])], env,
                       str(work))
    show_phases("eva run (creator: none)", phases_of(proc), wall)
    shutil.rmtree(work / "trl-out", ignore_errors=True)
    wall, proc = timed(trl_command(paths, args, work / "trl-out", phases=True), env, str(work))
    show_phases("TRL OnlineDPOTrainer", phases_of(proc), wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is shown)")
    parser.add_argument("--src", help="a checkout to measure instead of the installed eva_plugin (PYTHONPATH)")
    parser.add_argument("--work", help="folder for models, recipes and outputs (default: a temporary one)")
    parser.add_argument("--skip", action="append", default=[], choices=["fast", "tiny", "profile"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call and per train step")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--top", type=int, default=8, help="heavy imports listed per command")
    args = parser.parse_args()

    src = str(Path(args.src).resolve()) if args.src else None
    env = child_env(src)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="eva-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    where = subprocess.run([sys.executable, "-c", "import eva_plugin, os; print(os.path.dirname(eva_plugin.__file__))"],
                           env=env, cwd=str(work), capture_output=True, text=True).stdout.strip()
    print(f"eva_plugin from {where}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}; work folder {work}")
    paths = setup(work, args, env)
    try:
        if "fast" not in args.skip:
            bench_fast(paths, env, work, args.repeats)
        if "tiny" not in args.skip:
            bench_tiny(paths, env, work, args)
        if "profile" not in args.skip:
            profile_imports(paths, env, work, args)
            profile_phases(paths, env, work, args)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
