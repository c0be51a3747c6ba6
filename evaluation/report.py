"""What evaluate.py writes for people: the markdown report of one model, the histogram plots
beside it, and the README's comparison table of several models."""

from __future__ import annotations

from pathlib import Path

from .identification import POSITIONS
from .metrics import FEATURES


def plot_histograms(real: dict, generated: dict, path: Path, title: str) -> Path:
    """One row per composer, one column per feature: real and generated histograms overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (3 * len(FEATURES), 1.8 * len(real))
    figure, axes = plt.subplots(len(real), len(FEATURES), figsize=size, squeeze=False, layout="constrained")
    for row, composer in enumerate(real):
        for column, feature in enumerate(FEATURES):
            ax = axes[row][column]
            # One filled outline per histogram: a bar per bin made the plots most of evaluate.py's time.
            ax.stairs(real[composer][feature], fill=True, alpha=0.5, label="real")
            ax.stairs(generated[composer][feature], fill=True, alpha=0.5, label="generated")
            ax.set(xticks=[], yticks=[])  # shapes are compared, not values; ticks cost half the time
            if row == 0:
                ax.set_title(feature.replace("_", " "))
            if column == 0:
                ax.set_ylabel(composer)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def report(results: dict, plots: list[Path]) -> str:
    """The markdown report of one model's results (evaluate.py writes it beside the JSON)."""
    nll = results["likelihood"]
    lines = [
        f"# Evaluation of {results['model']} ({results['family']})",
        "",
        f"Test split of {', '.join(results['sources'])}: {nll['tokens']} tokens, {nll['notes']} notes: "
        f"**{nll['bits_per_token']:.3f} bits/token, {nll['bits_per_note']:.2f} bits/note**.",
        "",
        *identification_report(results["identification"]),
        *(line for found in results.get("identification_of", {}).values() for line in identification_report(found)),
        "## Composer classifier (top-1 / top-3 of the requested composer)",
        "",
        "| composer | real | " + " | ".join(f"guidance {r['guidance_scale']:g}" for r in results["runs"]) + " |",
        "|---|---|" + "---|" * len(results["runs"]),
    ]
    real = results["real"]["classifier"]
    for name in [*real["per_class"], "mean"]:
        cells = [real["per_class"][name] if name != "mean" else real["mean"]] + [
            r["classifier"]["per_class"].get(name) if name != "mean" else r["classifier"]["mean"]
            for r in results["runs"]
        ]
        lines.append(
            f"| {name} | " + " | ".join(f"{c['top1']:.3f} / {c['top3']:.3f}" if c else "-" for c in cells) + " |"
        )
    lines += ["", "## Statistics: overlap with real music (1 = same) / KL (0 = same), mean over composers", ""]
    lines += ["| guidance | " + " | ".join(FEATURES) + " | ms/token |", "|---|" + "---|" * (len(FEATURES) + 1)]
    for run in results["runs"]:
        cells = [f"{run['mean_distances'][f]['overlap']:.3f} / {run['mean_distances'][f]['kl']:.3f}" for f in FEATURES]
        lines.append(
            f"| {run['guidance_scale']:g} | " + " | ".join(cells) + f" | {run['generation']['ms_per_token']:.2f} |"
        )
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


def identification_report(found: dict | None) -> list[str]:
    """The markdown section of likelihood identification (none for an n-gram)."""
    if found is None:
        return []
    kind = found.get("kind", "composer")
    lines = [
        f"## Likelihood identification of the {kind} (mean per {kind} over {len(found['composers'])} values; "
        f"chance {found['chance']:.3f})",
        "",
        "| window | accuracy | 95 % interval | classifier, same windows | gain over Unknown | gain over wrong "
        "| windows |",
        "|---|---|---|---|---|---|---|",
    ]
    for position in POSITIONS:
        if position in found:
            row = found[position]
            classifier = f"{row['classifier']:.3f}" if row.get("classifier") is not None else "-"
            lines.append(
                f"| {position} | {row['accuracy']:.3f} | {row['interval'][0]:.3f}-{row['interval'][1]:.3f} "
                f"| {classifier} | {row['gain_over_unknown']['bits_per_window']:.2f} bits "
                f"| {row['gain_over_wrong']['bits_per_window']:.2f} bits | {row['windows']} |"
            )
    return [*lines, ""]


def identification_cells(found: dict | None) -> list[str]:
    """The table's cells: accuracy at the opening / middle, gains (bits per window) at the opening."""
    if found is None or "opening" not in found:
        return ["-", "-"]
    accuracy = " / ".join(f"{found[p]['accuracy']:.3f}" if p in found else "-" for p in POSITIONS)
    opening = found["opening"]
    gains = (
        f"{opening['gain_over_unknown']['bits_per_window']:.1f} / {opening['gain_over_wrong']['bits_per_window']:.1f}"
    )
    return [accuracy, gains]


def comparison_table(results: dict[str, dict]) -> str:
    """The README's table: one row per results file (named by its stem) and guidance scale; a
    result without samples (`--likelihood_only`) or training speed leaves those cells blank."""
    header = (
        "| model | params | train tok/s | bits/token | bits/note | identification opening / middle "
        "| opening gain over Unknown / wrong (bits) | guidance | classifier top-1 / top-3 | "
        + " | ".join(f"{f} overlap" for f in FEATURES)
        + " | ms/token |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, result in results.items():
        nll, speed = result["likelihood"], result.get("training_tokens_per_second")
        lead = [
            f"{name} ({result['family']})",
            f"{result['parameters'] / 1e6:.1f}M" if result.get("parameters") else "-",
            f"{speed:.0f}" if speed else "-",
            f"{nll['bits_per_token']:.3f}",
            f"{nll['bits_per_note']:.2f}",
            *identification_cells(result.get("identification")),
        ]
        for run in result.get("runs") or [None]:
            lines.append("| " + " | ".join(lead + run_cells(run)) + " |")
    judged = [result for result in results.values() if "real" in result]
    if judged:
        real, chance = judged[0]["real"]["classifier"]["mean"], judged[0]["real"]["chance"]
        found = next((r["identification"] for r in results.values() if r.get("identification")), None)
        guess = f"{found['chance']:.3f} / {found['chance']:.3f}" if found else ""
        for name, accuracy, identified in (("real test music (opening windows)", real, ""), ("chance", chance, guess)):
            cells = [name, *[""] * 4, identified, "", "", f"{accuracy['top1']:.3f} / {accuracy['top3']:.3f}"]
            lines.append("| " + " | ".join(cells + [""] * (len(FEATURES) + 1)) + " |")
    return "\n".join(lines)


def run_cells(run: dict | None) -> list[str]:
    """A guidance scale's cells: the judge's accuracy, the statistics' overlaps, the sampling speed."""
    if run is None:
        return ["-"] * (len(FEATURES) + 3)
    accuracy = run["classifier"]["mean"]
    return [
        f"{run['guidance_scale']:g}",
        f"{accuracy['top1']:.3f} / {accuracy['top3']:.3f}",
        *(f"{run['mean_distances'][f]['overlap']:.2f}" for f in FEATURES),
        f"{run['generation']['ms_per_token']:.2f}",
    ]
