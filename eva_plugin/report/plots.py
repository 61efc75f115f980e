"""The report's plots: ``write_plots`` draws the PNGs of ``collect``'s numbers (matplotlib Agg,
imported only when called)."""

from __future__ import annotations

from pathlib import Path

from eva_plugin import stage_list

ORIGINS = ("seed", "buffer", "evolved")


def write_plots(data: dict, folder: Path) -> list[tuple[str, str]]:
    """Write the PNGs into ``folder``; (file name, caption) for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name, caption):
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        written.append((name, caption))

    info = {t: e for t, e in data["informativeness"].items() if e.get("bins")}
    if info:
        fig, axes = plt.subplots(1, len(info), figsize=(4 * len(info), 3), squeeze=False)
        for ax, (t, e) in zip(axes[0], info.items()):
            edges = e["bins"]
            widths = [b - a for a, b in zip(edges, edges[1:])]
            ax.bar(edges[:-1], e["counts"], width=widths, align="edge", color="#bbbbbb", label="scored")
            ax.bar(edges[:-1], e["selected_counts"], width=widths, align="edge", color="#d62728", label="selected")
            ax.set_title(f"iter {t}: informativeness")
            ax.set_xlabel("info")
            ax.legend(fontsize=7)
        save(fig, "informativeness.png", "Informativeness per iteration (selected subset in red)")

    rewards = data["rewards_by_origin"]
    if rewards:
        labels, chosen, rejected = [], [], []
        for t, entry in rewards.items():
            for origin, r in entry.items():
                if origin == "all" and len(entry) > 1:
                    continue
                labels.append(f"{t}:{origin}")
                chosen.append(r["chosen_mean"] or 0.0)
                rejected.append(r["rejected_mean"] or 0.0)
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(labels)), 3))
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], chosen, width=0.4, label="chosen")
        ax.bar([i + 0.2 for i in x], rejected, width=0.4, label="rejected")
        ax.set_xticks(list(x), labels, rotation=30, fontsize=7)
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=7)
        save(fig, "rewards_by_origin.png", "Chosen vs rejected reward by prompt origin (iteration:origin)")

    def stacked(its, series: dict[str, list[float]], xlabel, ylabel, name, caption):
        fig, ax = plt.subplots(figsize=(5, 3))
        bottom = [0.0] * len(its)
        for label, values in series.items():
            ax.bar([str(t) for t in its], values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        finish(fig, ax, xlabel, ylabel, name, caption)

    def finish(fig, ax, xlabel, ylabel, name, caption):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        save(fig, name, caption)

    outcomes = data["evolved_outcomes"]
    if outcomes:
        its = list(outcomes)
        series = {s: [outcomes[t][s] for t in its] for s in stage_list.EVOLVED_STATUSES}
        stacked(its, {s: v for s, v in series.items() if any(v)}, "iteration", "evolved prompts",
                "evolved_outcomes.png", "Evolved-prompt outcomes by reason")

    lengths = data["prompt_length"]
    if lengths:
        fig, ax = plt.subplots(figsize=(5, 3))
        its = list(lengths)
        ax.plot(its, [lengths[t]["mean_chars"] for t in its], marker="o", label="all", color="black")
        for origin in ORIGINS:
            pts = [(t, lengths[t]["by_origin"][origin]["mean_chars"]) for t in its if origin in lengths[t]["by_origin"]]
            if pts:
                ax.plot(*zip(*pts), marker=".", linestyle="--", label=origin)
        finish(fig, ax, "iteration (0: seed pool)", "mean prompt length (chars)", "prompt_length.png",
               "Prompt length drift across iterations")

    categories = data["categories"]
    if categories:
        its = list(categories)
        names = list(dict.fromkeys(c for t in its for c in categories[t]))
        stacked(its, {n: [categories[t].get(n, 0) / max(1, sum(categories[t].values())) for t in its] for n in names},
                "iteration (0: seed pool)", "share of prompts", "categories.png", "Category mix of X_t")

    evals = data["eval"]
    if evals:
        fig, ax = plt.subplots(figsize=(5, 3))
        its = list(evals)
        ax.errorbar(its, [evals[t]["mean_reward"] for t in its],
                    yerr=[evals[t]["stderr"] or 0 for t in its], marker="o", label="mean reward")
        ax.set_xlabel("iteration (0: initial policy)")
        ax.set_ylabel("held-out mean reward")
        ax2 = ax.twinx()
        ax2.plot(its, [evals[t]["win_rate"] for t in its], marker="s", color="#d62728", label="win rate")
        ax2.set_ylabel("win rate vs initial")
        ax2.set_ylim(0, 1)
        ax.set_xticks(its)  # whole iterations
        handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, ["mean reward ± stderr", "win rate vs initial"], fontsize=7, loc="lower right")
        save(fig, "eval.png", "Held-out reward and win rate by iteration")

    costs = {t: c for t, c in data["stage_costs"].items() if c}
    if costs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        its = list(costs)
        stages = list(dict.fromkeys(s for t in its for s in costs[t]))
        width = 0.8 / max(1, len(its))
        for ax, key, label in ((axes[0], "seconds", "seconds"), (axes[1], "tokens_generated", "tokens generated")):
            for k, t in enumerate(its):
                ax.bar([i + k * width for i in range(len(stages))],
                       [(costs[t].get(s) or {}).get(key) or 0 for s in stages], width=width, label=f"iter {t}")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(stages))], stages, rotation=45, ha="right",
                          fontsize=7)
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        save(fig, "stage_costs.png", "Seconds and tokens per stage")
    return written
