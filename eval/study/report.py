"""The sweep's report: tables (per subject, scaling correlations, usage categories), scatter plots with
fitted lines and CIs, written as Markdown and as one self-contained HTML file (plots embedded).

Every table is built once as rows of cells and rendered by both writers, so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from welfare_offsets.eval.common.outputs import write_figure, write_text_file
from welfare_offsets.eval.stats import excludes_zero
from welfare_offsets.eval.study.profile import STATISTIC_HELP

_UNITS = {"experienced_utility": "sd units of utility", "self_report": "self-report points"}
_PANEL_TITLE = {
    "empathy_all": "empathy r (all)",
    "empathy_self": "empathy r (self)",
    "empathy_human": "empathy r (human)",
    "empathy_animal": "empathy r (animal)",
    "response_magnitude": "response to others\n(pleasure - pain)",
    "zero_point": "zero point",
    "sr_eu_agreement": "SR-EU agreement r",
    "wellbeing_index": "wellbeing index (%)",
}


def fmt_ci(stat: dict | None, digits: int = 2) -> str:
    """ "0.93 [0.85, 0.98]" from {"value" or "r", "ci95"}; a dash where undefined."""
    value = float("nan") if not stat else stat.get("value", stat.get("r"))
    if not math.isfinite(value):
        return "-"
    lo, hi = stat["ci95"]
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{value:.{digits}f}{ci}"


def capability_source(subject: dict) -> str:
    """Where a subject's capability came from: "measured (tasks; n items; lm-eval version)", with a typed value
    it replaced, or "as given" in the recipe."""
    measured = subject["capability_measured"]
    if measured is None:
        return "-" if subject["capability"] is None else "as given"
    items = sum(task["n"] for task in measured["tasks"].values())
    text = f"measured ({', '.join(measured['tasks'])}; {items} items; lm-eval {measured['lm_eval_version']})"
    given = subject["capability_given"]
    return text if given is None else f"{text}; as given {given:g}, not used"


def subject_table(results: dict) -> tuple[list[str], list[list[str]]]:
    stats = results["statistics"]
    header = ["subject", "family", "params", "capability", "capability from", *stats, "reliable"]
    rows = [
        [
            s["name"],
            s["family"],
            f"{s['params'] / 1e9:.3g}B" if s["params"] >= 1e8 else f"{s['params']:.3g}",
            _capability(s),
            capability_source(s),
            *[fmt_ci(s["statistics"].get(k), 1 if k == "wellbeing_index" else 2) for k in stats],
            "yes" if s["reliable"] else "no (low format adherence)",
        ]
        for s in results["subjects"]
    ]
    return header, rows


def scaling_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["statistic", "against", "family", "n", "Pearson r [95% CI]", "Spearman rho [95% CI]"]
    rows = [
        [
            r["statistic"],
            r["covariate"],
            r["family"],
            str(r["n"]),
            fmt_ci(r["pearson"]) if r["n"] >= 3 else r.get("note", "-"),
            fmt_ci(r["spearman"]) if r["n"] >= 3 else "-",
        ]
        for r in results["scaling"]
    ]
    return header, rows


# The anchor's table (one frontier model, utility minus zero point, sd units), for reading ours beside it.
ANCHOR_CATEGORY_MEANS = {
    "positive_personal_reflection": 2.30,
    "creative_work": 1.32,
    "good_news": 1.09,
    "life_guidance": 0.88,
    "therapy": 0.75,
    "coding": 0.70,
    "formatting_data": 0.50,
    "legal": 0.13,
    "nonsense_input": -0.04,
    "bad_news": -0.12,
    "ai_companion_roleplay": -0.29,
    "tedious_tasks": -0.33,
    "nsfw_request": -0.38,
    "offensive_content": -1.13,
    "fraud": -1.13,
    "seo_slop": -1.17,
    "violent_threats": -1.33,
    "user_in_crisis": -1.34,
    "jailbreak_attempt": -1.63,
}


def category_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Mean wellbeing minus zero point per usage category (rows, best first) for each subject (columns),
    with the anchor's frontier-model value where the category is one of its 19."""
    subjects = results["subjects"]
    categories = sorted({c for s in subjects for c in s["categories"]})
    mean_over = {c: np.nanmean([_value(s["categories"].get(c)) for s in subjects]) for c in categories}
    header = ["category", *[s["name"] for s in subjects], "anchor (frontier model)"]
    rows = [
        [
            c,
            *[fmt_ci(s["categories"].get(c)) for s in subjects],
            f"{ANCHOR_CATEGORY_MEANS[c]:.2f}" if c in ANCHOR_CATEGORY_MEANS else "-",
        ]
        for c in sorted(categories, key=lambda c: -mean_over[c])
    ]
    return header, rows


_BOUNDS = {
    **dict.fromkeys(
        ("empathy_all", "empathy_self", "empathy_human", "empathy_animal", "sr_eu_agreement"), (-1.05, 1.05)
    ),
    "wellbeing_index": (-2, 102),
}
HEADLINE_STATISTICS = ("empathy_all", "empathy_human", "empathy_animal", "response_magnitude", "wellbeing_index")


def headline(results: dict) -> list[str]:
    """Plain-language lines: how empathy for others, the response to them and the wellbeing index move
    with size (and capability, where given), per family and pooled."""
    lines = []
    for row in results["scaling"]:
        if row["statistic"] not in HEADLINE_STATISTICS or row["n"] < 3:
            continue
        p, s = row["pearson"], row["spearman"]
        against = "size" if row["covariate"] == "log10 parameters" else row["covariate"]
        trend = f"no detectable trend with {against} (CIs include 0)"
        if excludes_zero(s["ci95"]) or excludes_zero(p["ci95"]):
            trend = f"{'rises' if p['r'] > 0 else 'falls'} with {against}"
        group = "all families" if row["family"] == "all" else f"family {row['family']}"
        lines.append(
            f"{group}: {row['statistic']} {trend}; Pearson r = {fmt_ci(p)}, Spearman rho = {fmt_ci(s)}, "
            f"{row['n']} subjects."
        )
    unreliable = [s["name"] for s in results["subjects"] if not s["reliable"]]
    if unreliable:
        lines.append(f"Not reliable readings (the model rarely answers in the asked format): {', '.join(unreliable)}.")
    unmeasured = results.get("cost", {}).get("ledger", {}).get("unmeasured")
    if unmeasured:
        lines.insert(
            0,
            f"Not measured, the sweep's budget ran out first: {', '.join(unmeasured)}; everything here is about "
            "the other subjects (a rerun with a larger budget_hours measures only these).",
        )
    return lines


def plot_scaling(results: dict, covariate: str, path: str | Path, replicates: dict[str, dict] | None = None) -> Path:
    """One panel per statistic: subjects with 95% CIs against the covariate, a least-squares line per
    family, and a 95% band for the line from the subjects' bootstrap `replicates` ({name: {statistic: [...]}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = results["statistics"]
    cols = min(4, len(stats))
    rows_n = math.ceil(len(stats) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.2 * rows_n), squeeze=False)
    families = sorted({s["family"] for s in results["subjects"]})
    colours = {f: plt.get_cmap("tab10")(k % 10) for k, f in enumerate(families)}
    for ax, stat in zip(axes.flat, stats):
        for family in families:
            members = [
                s
                for s in results["subjects"]
                if s["family"] == family
                and s.get(covariate) is not None
                and stat in s["statistics"]
                and math.isfinite(s["statistics"][stat]["value"])
            ]
            if not members:
                continue
            x = np.array([s[covariate] for s in members], dtype=float)
            y = np.array([s["statistics"][stat]["value"] for s in members], dtype=float)
            lo, hi = np.array([s["statistics"][stat]["ci95"] for s in members], dtype=float).T
            ax.errorbar(
                x,
                y,
                yerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)],
                fmt="o",
                ms=4,
                capsize=3,
                color=colours[family],
                label=family,
            )
            if len(set(x.tolist())) >= 2:
                xs = np.linspace(x.min(), x.max(), 50)
                slope, intercept = np.polyfit(x, y, 1)
                ax.plot(xs, slope * xs + intercept, color=colours[family], lw=1)
                band = _line_band(members, stat, covariate, xs, replicates) if replicates else None
                if band is not None:
                    ax.fill_between(xs, band[0], band[1], color=colours[family], alpha=0.15, lw=0)
        ax.set_title(_PANEL_TITLE.get(stat, stat), fontsize=9)
        if stat in _BOUNDS:  # a band of lines may leave the statistic's range; the axis does not
            ax.set_ylim(*_BOUNDS[stat])
        ax.set_xlabel(results["covariates"][covariate], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(stats) :]:
        ax.axis("off")
    if len(families) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    written = write_figure(fig, path, dpi=110)
    plt.close(fig)
    return written


def write_report(results: dict, folder: Path, plots: dict[str, Path]) -> tuple[Path, Path]:
    """report.md and report.html in `folder` (plots given as {title: png path} in the same folder), each
    written atomically: the sweep's folder is written in place, and a link or FIFO left at a report's name
    is replaced, never written through."""
    tables = [
        ("Per subject", subject_table(results)),
        ("How each statistic moves with size and capability", scaling_rows(results)),
        ("Usage categories: mean wellbeing minus zero point", category_rows(results)),
    ]
    intro = _intro(results)
    md = [
        "# Wellbeing scale sweep",
        "",
        *intro,
        "",
        "## Headline",
        "",
        *[f"- {line}" for line in headline(results)],
        "",
    ]
    body = [
        "<h1>Wellbeing scale sweep</h1>",
        *[f"<p>{html.escape(line)}</p>" for line in intro],
        "<h2>Headline</h2><ul>",
        *[f"<li>{html.escape(line)}</li>" for line in headline(results)],
        "</ul>",
    ]
    for title, (header, rows) in tables:
        md += [f"## {title}", "", _markdown_table(header, rows), ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    md += ["## Plots", ""]
    body += ["<h2>Plots</h2>"]
    for title, png in plots.items():
        md += [f"![{title}]({png.name})", ""]
        encoded = base64.b64encode(png.read_bytes()).decode()
        body += [
            f"<h3>{html.escape(title)}</h3>",
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">',
        ]
    md += ["## Definitions", "", *[f"- **{k}**: {v}" for k, v in STATISTIC_HELP.items()], ""]
    body += [
        "<h2>Definitions</h2><ul>",
        *[f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in STATISTIC_HELP.items()],
        "</ul>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}img{max-width:100%}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>Wellbeing scale sweep</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    return write_text_file(folder / "report.md", "\n".join(md)), write_text_file(folder / "report.html", page)


def _intro(results: dict) -> list[str]:
    probe = {s["primary_probe"] for s in results["subjects"]}
    units = ", ".join(_UNITS.get(p, p) for p in sorted(probe))
    return [
        f"{len(results['subjects'])} subjects; wellbeing read from {', '.join(sorted(probe))} ({units}); "
        "every interval is a 95% bootstrap CI (across subjects: subjects resampled, each at its own bootstrap replicate)."
    ]


def _line_band(members: list[dict], stat: str, covariate: str, xs: np.ndarray, replicates: dict[str, dict]):
    """2.5-97.5% of least-squares lines refitted on subjects resampled at their own replicates."""
    reps = [replicates.get(s["name"], {}).get(stat) for s in members]
    if any(r is None for r in reps) or len(members) < 3:
        return None
    x = np.array([s[covariate] for s in members], dtype=float)
    reps = [np.asarray(r, dtype=float) for r in reps]
    rng = np.random.default_rng(0)
    lines = []
    for b in range(min(len(r) for r in reps)):
        idx = rng.integers(0, len(members), len(members))
        if len(set(x[idx].tolist())) < 2:
            continue
        y = np.array([reps[i][b] for i in idx])
        if not np.all(np.isfinite(y)):
            continue
        slope, intercept = np.polyfit(x[idx], y, 1)
        lines.append(slope * xs + intercept)
    if len(lines) < 20:
        return None
    return np.percentile(np.array(lines), [2.5, 97.5], axis=0)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _capability(subject: dict) -> str:
    """A measured capability as an accuracy (3 decimals), a typed one as it was typed."""
    if subject["capability"] is None:
        return "-"
    return f"{subject['capability']:.3f}" if subject["capability_measured"] else f"{subject['capability']:g}"


def _value(stat: dict | None) -> float:
    return float("nan") if not stat else float(stat["value"])
