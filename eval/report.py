"""Human-facing views of an evaluation: one PNG figure and a short Markdown summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_PROBE_AXIS = {
    "self_report": "self-report (1-7, 4 = neutral)",
    "experienced_utility": "experienced utility (sd units)",
    "stop": "P(end conversation)",
}
_TARGET_COLOURS = {"self": "tab:purple", "human": "tab:blue", "animal": "tab:green"}


def plot_evaluation(results: dict, items: list[dict], path: str | Path, title: str = "") -> Path:
    """Per probe: baseline vs post-dysphoric with 95% CIs; last panel: empathy, wellbeing vs intensity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = list(results["probes"])
    fig, axes = plt.subplots(1, len(probes) + 1, figsize=(4.2 * (len(probes) + 1), 4.2), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        res = results["probes"][probe]
        means = [res[c]["mean"] for c in ("baseline", "post_dysphoric")]
        errs = np.array(
            [[m - res[c]["ci95"][0], res[c]["ci95"][1] - m] for m, c in zip(means, ("baseline", "post_dysphoric"))]
        ).T
        ax.bar([0, 1], means, yerr=errs, capsize=6, color=["tab:gray", "tab:red"], alpha=0.85)
        ax.set_xticks([0, 1], ["baseline", "post-dysphoric"])
        ax.set_ylabel(_PROBE_AXIS.get(probe, probe))
        d = res["delta"]
        ax.set_title(f"{probe}\ndelta {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]", fontsize=9)
        if probe == "self_report":
            ax.axhline(4, color="k", lw=0.7, ls="--")
            ax.set_ylim(1, 7)
    ax = axes[0][-1]
    primary = next(iter(results["empathy"].values()))["probe"] if results["empathy"] else None
    for target, res in results["empathy"].items():
        points = [(i["intensity"], i[primary]) for i in items if i["target"] == target and i.get(primary) is not None]
        if points:
            x, y = np.array(points).T
            r = "not measured" if res["r"] is None else f"r={res['r']:+.2f}"
            ax.scatter(x, y, s=14, alpha=0.7, color=_TARGET_COLOURS.get(target), label=f"{target}: {r}")
            if len(x) > 2 and np.std(x) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                xs = np.linspace(-10, 10, 2)
                ax.plot(xs, slope * xs + intercept, color=_TARGET_COLOURS.get(target), lw=1)
    ax.set_xlabel("signed intensity of the experience")
    ax.set_ylabel(_PROBE_AXIS.get(primary, str(primary)))
    ax.set_title("empathy: wellbeing vs others' pain and joy", fontsize=9)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def summary_markdown(results: dict) -> str:
    """A short readable summary: the headline table, empathy, zero point, and the plain-language reading."""
    subject = results.get("subject", {})
    lines = [
        f"# Wellbeing evaluation: {subject.get('model_id', '?')}"
        + (f" + {subject['adapter']}" if subject.get("adapter") else ""),
        "",
        f"Stimuli: `{results.get('stimuli', {}).get('source', '?')}` (sha256 {results.get('stimuli', {}).get('sha256', '?')[:12]}), "
        f"split {results.get('config', {}).get('resolved', {}).get('split', '?')}, items per condition {results.get('n_items', {})}.",
        "",
        "| probe | baseline | post-dysphoric | delta (95% CI) | valid-answer mass |",
        "| --- | --- | --- | --- | --- |",
    ]
    for probe, res in results["probes"].items():
        d = res["delta"]
        lines.append(
            f"| {probe} | {res['baseline']['mean']:.3f} | {res['post_dysphoric']['mean']:.3f} | "
            f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {res['adherence']['mean_valid_mass']:.2f} |"
        )
    lines += [
        "",
        "| empathy target | r over non-neutral items (95% CI) | n | r over all items (95% CI) | n | probe |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target, res in results["empathy"].items():
        lines.append(
            f"| {target} | {_r_text(res)} | {res['n']} | {_r_text(res['all_items'])} | {res['all_items']['n']} | "
            f"{res['probe']} |"
        )
    zp = results.get("zero_point", {})
    if zp:
        lines += [
            "",
            "Zero point (utility scale): "
            + "; ".join(
                f"{name} {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
                + ("" if v.get("reliable", True) else " (unreliable: SR does not track utility)")
                for name, v in zp.items()
            ),
        ]
    lines += ["", "## Reading", ""] + [f"- {line}" for line in results["interpretation"]]
    return "\n".join(lines) + "\n"


def _r_text(res: dict) -> str:
    if res["r"] is None:
        return f"not measured: {res['reason']}"
    return f"{res['r']:+.2f} [{res['ci95'][0]:+.2f}, {res['ci95'][1]:+.2f}]"
