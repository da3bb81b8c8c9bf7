"""The evaluation report: ``report.md`` for people, ``per_class.csv`` for spreadsheets, and PNG plots.

Built from the dict :func:`cxr_core.eval.evaluate.evaluate` returns plus the predictions it was computed from
(for the ROC / PR curves). Every file is written atomically with mode 0644. Plots use matplotlib's
object API (``Figure`` + Agg through ``savefig(format="png")``), imported only when plotting, so no
pyplot state and no display are involved.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.atomic import atomic_path, atomic_write_text
from cxr_core.eval.evaluate import pr_curve, roc_curve
from cxr_core.ood import FAR_SHARE, PERCENTILE, OodReport
from cxr_core.predictions import Predictions
from cxr_core.text import spreadsheet_safe, visible

FILE_MODE = 0o644
CSV_COLUMNS = ("label", "n", "support", "auc", "auc_lo", "auc_hi", "ap", "ap_lo", "ap_hi", "threshold", "tp", "fp",
               "tn", "fn", "sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity", "specificity_lo",
               "specificity_hi", "ppv", "npv", "f1", "ece", "excluded")


def write_report(result: Mapping[str, Any], preds: Predictions, out_dir: str | os.PathLike[str], *, title: str,
                 localisation: Mapping[str, Mapping[str, Any]] | None = None,
                 caveats: Sequence[str] = (), ood: OodReport | None = None) -> list[Path]:
    """Write ``report.md``, ``per_class.csv`` and the plots into ``out_dir``; return the paths written.

    ``localisation`` (optional): ``{label: {"pointing_game": x, "iou": y, "n": n}}`` adds a table. ``caveats``:
    lines a reader must see before the numbers (e.g. thresholds tuned on the split evaluated). ``ood``: how far
    the images lie from the model's training images, a section with each measure.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "per_class.csv"
    atomic_write_text(csv_path, per_class_csv(result), mode=FILE_MODE)
    figures = write_plots(result, preds, out)
    md_path = out / "report.md"
    atomic_write_text(md_path, render_markdown(result, preds, title=title, localisation=localisation,
                                               figures=[p.name for p in figures], caveats=caveats, ood=ood),
                       mode=FILE_MODE)
    return [md_path, csv_path, *figures]


# -- tables ------------------------------------------------------------------------------------------------


def per_class_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per class with the columns of ``per_class.csv`` (None where undefined)."""
    rows = []
    for label in result["labels"]:
        tm = result["threshold_metrics"][label]
        auc_ci = result["ci"].get(label) or [None, None]
        ap_ci = result["ci_ap"].get(label) or [None, None]
        sens_ci = result.get("ci_sensitivity", {}).get(label) or [None, None]
        spec_ci = result.get("ci_specificity", {}).get(label) or [None, None]
        rows.append({
            "label": label, "n": result["n_labelled"][label], "support": result["support"][label],
            "auc": result["auc"][label], "auc_lo": auc_ci[0], "auc_hi": auc_ci[1],
            "ap": result["ap"][label], "ap_lo": ap_ci[0], "ap_hi": ap_ci[1],
            **{key: tm[key] for key in ("threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv",
                                        "npv", "f1")},
            "sensitivity_lo": sens_ci[0], "sensitivity_hi": sens_ci[1],
            "specificity_lo": spec_ci[0], "specificity_hi": spec_ci[1],
            "ece": result["calibration"][label]["ece"], "excluded": result["excluded"].get(label),
        })
    return rows


def per_class_csv(result: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in per_class_rows(result):
        writer.writerow([spreadsheet_safe(visible(row[c])) if c in ("label", "excluded") and row[c] is not None else
                         "" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                         for c in CSV_COLUMNS])
    return buf.getvalue()


def render_markdown(result: Mapping[str, Any], preds: Predictions, *, title: str,
                    localisation: Mapping[str, Mapping[str, Any]] | None = None,
                    figures: Sequence[str] = (), caveats: Sequence[str] = (), ood: OodReport | None = None) -> str:
    """The Markdown text of ``report.md``."""
    labels = result["labels"]
    excluded = result["excluded"]
    n_given = sum(1 for s in result["threshold_source"].values() if s == "given")
    lines = [f"# {title}", ""]
    for caveat in caveats:
        lines += [f"> **Caveat:** {caveat}.", ""]
    lines += ["## What was evaluated", ""]
    lines.append(f"- **{result['n_images']:,} images** of **{result['n_patients']:,} patients**, "
                 f"{len(labels)} classes ({len(labels) - len(excluded)} scored, {len(excluded)} excluded).")
    for key, value in preds.meta.items():
        if isinstance(value, str | int | float | bool) and value != "":
            lines.append(f"- {key.replace('_', ' ').capitalize()}: `{visible(value).replace('`', chr(39))}`")
    lines.append("- Truth: each class is scored on the images whose label is known (1 or 0); unknown or "
                 "uncertain labels are left out of that class only.")
    lines.append("- Thresholds: " + ("0.5 for every class (none given)." if n_given == 0 else
                                     f"given for {n_given} of {len(labels)} classes"
                                     + ("." if n_given == len(labels) else ", 0.5 for the others.")))
    if result["n_boot"] > 0:
        lines.append(f"- 95% confidence intervals: percentile bootstrap over **patients** ({result['n_boot']} "
                     f"resamples, seed {result['seed']}; all images of a drawn patient count, a patient drawn "
                     "twice counts twice).")
    else:
        lines.append("- No confidence intervals (bootstrap turned off).")

    n_incl = len(labels) - len(excluded)
    lines += ["", "## Summary", "", "| Average | AUC [95% CI] | AP [95% CI] | Sensitivity | Specificity | PPV | NPV | F1 |",
              "|---|---|---|---|---|---|---|---|"]
    mac, mic = result["threshold_macro"], result["threshold_micro"]
    lines.append(f"| Macro ({n_incl} classes) | {_ci(result['auc_macro'], result['ci_auc_macro'])} | "
                 f"{_ci(result['ap_macro'], result['ci_ap_macro'])} | " + _ratios(mac) + " |")
    lines.append(f"| Micro (pooled cells) | {_f(result['auc_micro'])} | {_f(result['ap_micro'])} | "
                 + _ratios(mic) + " |")
    lines += ["", f"Expected calibration error: {_f(result['ece'])} pooled over all labelled cells, "
              f"{_f(result['ece_macro'])} averaged over classes ({result['n_bins']} equal-width bins)."]
    if result["n_boot"] > 0 and result["n_boot_used_macro"] < result["n_boot"]:
        lines.append(f"The macro CIs use the {result['n_boot_used_macro']} of {result['n_boot']} resamples in which "
                     "every scored class had positives and negatives.")

    lines += ["", "## Per class", "",
              "| Class | Images | Positives | AUC [95% CI] | AP [95% CI] | Threshold | Sens [95% CI] | Spec [95% CI] "
              "| PPV | NPV | F1 | ECE |",
              "|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in per_class_rows(result):
        auc = "excluded" if row["excluded"] else _ci(row["auc"], _pair(row["auc_lo"], row["auc_hi"]))
        ap = "excluded" if row["excluded"] else _ci(row["ap"], _pair(row["ap_lo"], row["ap_hi"]))
        sens = _ci(row["sensitivity"], _pair(row["sensitivity_lo"], row["sensitivity_hi"]))
        spec = _ci(row["specificity"], _pair(row["specificity_lo"], row["specificity_hi"]))
        lines.append(f"| {_cell(row['label'])} | {row['n']:,} | {row['support']:,} | {auc} | {ap} | "
                     f"{row['threshold']:.3g} | {sens} | {spec} | {_f(row['ppv'])} | {_f(row['npv'])} | "
                     f"{_f(row['f1'])} | {_f(row['ece'])} |")
    short = [label for label in labels if label not in excluded
             and 0 < result["n_boot_used"][label] < result["n_boot"]]
    if short:
        lines += ["", "Resamples used for the CIs where some lacked positives or negatives: "
                  + ", ".join(f"{label} {result['n_boot_used'][label]}" for label in short) + "."]

    if excluded:
        lines += ["", "## Excluded classes", "",
                  "Left out of the per-class AUC/AP and of the macro averages (no AUC exists without both outcomes; "
                  "it is not reported as 0.5):", ""]
        for label, reason in excluded.items():
            lines.append(f"- **{_cell(label)}**: {reason} ({result['support'][label]:,} positives among "
                         f"{result['n_labelled'][label]:,} labelled images).")

    pooled = result["calibration_pooled"]["bins"]
    lines += ["", "## Calibration", "",
              "ECE = sum over bins of (bin count / n) x |mean predicted probability - observed positive fraction|, "
              "bins of equal width on [0, 1]. Pooled over all labelled (image, class) cells:", "",
              "| Bin | Count | Mean predicted | Observed |", "|---|--:|--:|--:|"]
    edges = pooled["edges"]
    for b, count in enumerate(pooled["count"]):
        lines.append(f"| {edges[b]:.2f}–{edges[b + 1]:.2f} | {count:,} | {_f(pooled['mean_predicted'][b])} | "
                     f"{_f(pooled['observed'][b])} |")

    if localisation:
        lines += ["", "## Localisation", "", "| Class | Images | Pointing game | IoU |", "|---|--:|--:|--:|"]
        for label, loc in localisation.items():
            n = loc.get("n")
            lines.append(f"| {_cell(label)} | {'—' if n is None else f'{int(n):,}'} | "
                         f"{_f(loc.get('pointing_game'))} | {_f(loc.get('iou'))} |")

    if ood is not None:
        lines += ["", "## Distance from the training images", "", ood.message[0].upper() + ood.message[1:] + ".", "",
                  f"Each image's distance to statistics of the model's training images, stored in its checkpoint; "
                  f"the training percentiles are those of training images scored against statistics fitted "
                  f"without them. The images count as far when at least {FAR_SHARE:.0%} of them lie beyond the "
                  f"{PERCENTILE:.0f}th percentile on some measure.", "",
                  "| Measure | Images | Beyond training p99 | Median distance | Training p95 | Training p99 |",
                  "|---|--:|--:|--:|--:|--:|"]
        for m in ood.measures.values():
            lines.append(f"| {m.name}: {m.description} | {m.n:,} | {m.beyond:,} ({m.share_beyond:.0%}) | "
                         f"{_f(m.median)} | {_f(m.p95)} | {_f(m.p99)} |")

    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{_FIGURE_TITLES.get(name, name)}]({name})" for name in figures]
    lines += ["", "## Method", "",
              "AUC is the Mann-Whitney statistic (ties count one half); AP is scikit-learn's average precision "
              "(sum over thresholds of recall step x precision). Macro = unweighted mean over scored classes; "
              "micro = one AUC/AP over all labelled (image, class) cells pooled. Threshold metrics flag an image "
              "when its probability is at least the threshold; a ratio with a zero denominator is shown as —.", ""]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------------

_FIGURE_TITLES = {"auc_ci.png": "AUC per class with 95% CI", "roc.png": "ROC curves",
                  "pr.png": "Precision-recall curves", "reliability.png": "Reliability diagram"}


def write_plots(result: Mapping[str, Any], preds: Predictions, out_dir: Path) -> list[Path]:
    """AUC bars with CI error bars, ROC and PR small multiples, reliability diagram; the PNG paths written.

    The AUC, ROC and PR plots show the scored classes only (an excluded class has no curve worth drawing).
    """
    from matplotlib.figure import Figure

    scored = [label for label in result["labels"] if result["auc"][label] is not None]
    figures: dict[str, Figure] = {}
    if scored:
        figures["auc_ci.png"] = _auc_bars(Figure, result, scored)
        known = preds.mask()
        assert preds.truth is not None
        data = {}
        for label in scored:
            k = preds.labels.index(label)
            data[label] = (preds.truth[known[:, k], k] > 0.5, preds.probs[known[:, k], k])
        figures["roc.png"] = _curves(Figure, data, "roc", {x: result["auc"][x] for x in scored})
        figures["pr.png"] = _curves(Figure, data, "pr", {x: result["ap"][x] for x in scored})
    figures["reliability.png"] = _reliability(Figure, result)
    written = []
    for name, fig in figures.items():
        path = out_dir / name
        with atomic_path(path, mode=FILE_MODE) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
        written.append(path)
    return written


def _auc_bars(figure_cls: Any, result: Mapping[str, Any], scored: list[str]) -> Any:
    ranked = sorted(scored, key=lambda label: result["auc"][label])
    aucs = [result["auc"][label] for label in ranked]
    cis = [result["ci"].get(label) or [a, a] for label, a in zip(ranked, aucs, strict=True)]
    err = np.array([[a - lo, hi - a] for a, (lo, hi) in zip(aucs, cis, strict=True)]).T
    fig = figure_cls(figsize=(7, 1 + 0.3 * len(ranked)), layout="tight")
    ax = fig.add_subplot()
    ax.barh(range(len(ranked)), aucs, xerr=err, color="#4c72b0", ecolor="black", capsize=2)
    ax.set_yticks(range(len(ranked)), [_plot_text(label) for label in ranked])
    ax.axvline(0.5, color="grey", linestyle=":")
    if result["auc_macro"] is not None:
        ax.axvline(result["auc_macro"], color="#c44e52", label=f"macro {result['auc_macro']:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(max(0.0, min(0.4, min(lo for lo, _ in cis) - 0.05)), 1.0)
    ax.set_xlabel("AUC (95% CI, bootstrap by patient)")
    return fig


def _curves(figure_cls: Any, data: Mapping[str, tuple[np.ndarray, np.ndarray]], kind: str,
            values: Mapping[str, float]) -> Any:
    """Small multiples of ROC (``kind="roc"``) or precision-recall curves, one panel per class."""
    cols = math.ceil(math.sqrt(len(data)))
    rows = math.ceil(len(data) / cols)
    # fixed margins in inches (panel 1.7, gap 0.2, title 0.45): tight layout costs seconds on a grid this size
    width, height = 0.75 + 1.9 * cols, 0.55 + 2.15 * rows
    fig = figure_cls(figsize=(width, height))
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.45 / height,
                        wspace=0.2 / 1.7, hspace=0.45 / 1.7)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (label, (truth, scores)) in zip(axes, data.items(), strict=False):
        if kind == "roc":
            x, y = roc_curve(truth, scores)
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
            ax.plot(x, y, color="#4c72b0")
        else:
            x, y = pr_curve(truth, scores)
            ax.axhline(truth.mean(), color="grey", linestyle=":", linewidth=0.8)  # a random ranking's AP
            ax.step(np.r_[0.0, x], np.r_[y[0], y], where="pre", color="#55a868")  # area under it = AP
        ax.set_title(f"{_plot_text(label)}\n{'AUC' if kind == 'roc' else 'AP'} {values[label]:.3f}", fontsize=8)
    for i in range(len(data), axes.size):
        axes[i].set_visible(False)
        axes[i - cols].tick_params(labelbottom=True)  # the panel above an empty slot shows the x tick labels
    axes[0].set(xlim=(0, 1), ylim=(0, 1.02), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1],
                xticklabels=["0", ".5", "1"], yticklabels=["0", ".5", "1"])
    x_label, y_label = ("1 - specificity", "sensitivity") if kind == "roc" else ("recall", "precision")
    fig.supxlabel(x_label, fontsize=9)
    fig.supylabel(y_label, fontsize=9)
    return fig


def _reliability(figure_cls: Any, result: Mapping[str, Any]) -> Any:
    """Observed positive fraction against mean predicted probability per bin (pooled and per class), with
    the number of cells per bin underneath."""
    fig = figure_cls(figsize=(6, 6), layout="tight")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":")
    for label in result["labels"]:
        top.plot(*_filled(result["calibration"][label]["bins"]), color="#4c72b0", alpha=0.25, linewidth=0.8)
    pooled = result["calibration_pooled"]["bins"]
    top.plot(*_filled(pooled), "o-", color="#c44e52", label=f"pooled (ECE {_f(result['ece'])})")
    top.set(ylabel="observed positive fraction", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left", fontsize=8)
    top.set_title("Reliability (thin lines: classes)", fontsize=10)
    edges = np.array(pooled["edges"])
    bottom.bar(edges[:-1], pooled["count"], width=np.diff(edges), align="edge", color="#8c8c8c", edgecolor="white")
    bottom.set(xlabel="mean predicted probability", ylabel="cells")
    if any(pooled["count"]):
        bottom.set_yscale("log")
    return fig


def _filled(bins: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    pairs = [(m, o) for m, o in zip(bins["mean_predicted"], bins["observed"], strict=True) if m is not None]
    return [m for m, _ in pairs], [o for _, o in pairs]


# -- formatting --------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pair(lo: float | None, hi: float | None) -> list[float] | None:
    return None if lo is None or hi is None else [lo, hi]


def _ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if not ci else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _ratios(values: Mapping[str, Any]) -> str:
    return " | ".join(_f(values.get(key)) for key in ("sensitivity", "specificity", "ppv", "npv", "f1"))


def _plot_text(text: str) -> str:
    """A label as matplotlib draws it literally ('$' would start mathtext, which can fail on a name)."""
    return visible(text).replace("$", r"\$")


def _cell(text: str) -> str:
    return visible(text).replace("|", "\\|")
