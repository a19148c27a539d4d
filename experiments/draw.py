"""Paper-style panels (PNG), drawn on an Agg canvas without pyplot (no global state).

A k-panel is a dict: ``title``; ``curves``: list of ``(label, ks, values, style)``
with ``style`` a dict of matplotlib line options plus, optionally, ``yerr`` (the 95%
interval's half-width per point, drawn as error bars) and ``unsettled`` (a bool per
point: drawn as a hollow red ring, "not converged in every seed"); ``hlines``: list of
``(label, value, style)`` with optional ``band`` (half-width, drawn shaded); ``faint``:
the same two kinds of entries for the paper's values (``("curve", label, ks, values)``
or ``("hline", label, value)``), drawn pale; ``ylabel``.

Legends sit below their axes (never over the data), titles and captions are wrapped
to the figure's width, and the layout engine keeps all of it inside the image.
"""
import textwrap

FAINT = {"alpha": 0.35, "linewidth": 1.0}


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _titles(fig, suptitle, caption, width_chars):
    """Wrapped title above and caption line(s) below the panels (inside the image)."""
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, width_chars), fontsize=9)
    if caption:
        fig.supxlabel(textwrap.fill(caption, int(width_chars * 1.15)), fontsize=7, color="dimgray")


def _legend_below(ax, ncol=2):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                  frameon=False)


def k_axis(ax, ks):
    ks = sorted(set(ks))
    if len(ks) > 1 and min(ks) > 0:
        ax.set_xscale("log")
    if ks:
        ax.set_xticks(ks, labels=[f"{k:g}" for k in ks], rotation=45 if len(ks) > 5 else 0)
    ax.minorticks_off()
    ax.set_xlabel("k (remaining ratio: fraction of weights kept)")


def _curve(ax, label, xs, ys, style):
    style = dict({"marker": "o", "markersize": 4}, **style)
    yerr, unsettled = style.pop("yerr", None), style.pop("unsettled", None)
    if yerr is not None and any(e is not None for e in yerr):
        ax.errorbar(xs, ys, yerr=[e or 0.0 for e in yerr], label=label, capsize=3, **style)
        _mark_clipped(ax, xs, ys, yerr, style.get("color"))
    else:
        ax.plot(xs, ys, label=label, **style)
    bad = [(x, y) for x, y, u in zip(xs, ys, unsettled or []) if u]
    if bad:
        label = "not converged in every seed"
        ax.plot([x for x, _ in bad], [y for _, y in bad], linestyle="none", marker="o", markersize=10,
                markerfacecolor="none", markeredgecolor="red",
                label=None if label in ax.get_legend_handles_labels()[1] else label)


CLIPPED = "95% interval clipped at 100"


def _mark_clipped(ax, xs, ys, yerr, color):
    """A caret at 100 where a 95% interval reaches past 100% (the axis stops there, the interval does not)."""
    over = [x for x, y, e in zip(xs, ys, yerr) if y is not None and e and y + e > 100]
    if over:
        seen = CLIPPED in ax.get_legend_handles_labels()[1]
        ax.plot(over, [100] * len(over), linestyle="none", marker="^", markersize=6, color=color or "black",
                clip_on=False, label=None if seen else CLIPPED)


def k_panel(ax, panel):
    ks = []
    for label, xs, ys, style in panel.get("curves", []):
        if xs:
            _curve(ax, label, xs, ys, style)
            ks += xs
    for label, value, style in panel.get("hlines", []):
        if value is not None:
            style = dict(style)
            band = style.pop("band", None)
            ax.axhline(value, label=label, **dict({"linestyle": "--"}, **style))
            if band:
                ax.axhspan(value - band, value + band, alpha=0.12, color=style.get("color", "gray"),
                           label=f"{label}: 95% interval over seeds")
    for entry in panel.get("faint", []):
        color = entry[-1] if isinstance(entry[-1], str) and entry[-1].startswith("C") else "gray"
        if entry[0] == "curve":
            ax.plot(entry[2], entry[3], marker="x", linestyle=":", color=color, label=entry[1], **FAINT)
        else:
            ax.axhline(entry[2], linestyle="-.", color=color, label=entry[1], **FAINT)
    k_axis(ax, ks)
    ax.set_ylabel(panel.get("ylabel", "accuracy (%)"))
    ax.set_ylim(*panel.get("ylim", (0, 100)))
    ax.grid(alpha=0.3)
    _legend_below(ax)
    ax.set_title(textwrap.fill(panel.get("title", ""), 60), fontsize=9)


def k_panels(path, panels, suptitle="", caption=""):
    """k-panels side by side, three to a row; ``caption`` (profile, seeds, protocol) below them."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(5.0 * cols, 5.4 * rows + 0.6)
    for i, panel in enumerate(panels):
        k_panel(fig.add_subplot(rows, cols, i + 1), panel)
    _titles(fig, suptitle, caption, 70 * cols)
    fig.savefig(path, dpi=110)
    return path


def heatmap(ax, fig, ks, rows, natural, title, decimals=1):
    """Annotated source x target matrix, natural accuracy as the top row (``decimals`` after the point:
    the data's resolution)."""
    import numpy as np

    data = np.asarray([natural] + rows, dtype=float)
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    pad = max(0.5, 0.05 * (high - low))  # the colour scale spans the data (0-100 made every cell one colour)
    low, high = max(0.0, low - pad), min(100.0, high + pad)
    image = ax.imshow(data, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(len(ks)), labels=[f"{k:g}" for k in ks])
    ax.set_yticks(range(len(rows) + 1), labels=["natural"] + [f"{k:g}" for k in ks])
    ax.axhline(0.5, color="white", linewidth=2)
    ax.set_xlabel("target ticket k (evaluated)")
    ax.set_ylabel("source ticket k (attacked)")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.{decimals}f}", ha="center", va="center", fontsize=7,
                    color="black" if data[i, j] > (low + high) / 2 else "white",
                    fontweight="bold" if i > 0 and i - 1 == j else "normal")
    fig.colorbar(image, ax=ax, label=f"accuracy (%); colours span the data, {low:.1f}-{high:.1f}", fraction=0.046)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)


def bars(ax, groups, title, faint=None, errors=None):
    """Grouped bars: ``groups`` = [(group label, [(bar label, value), ...])]; one colour per bar label;
    ``faint``: the paper's values, {group label: [(bar label, value), ...]}, drawn as dashed outlines;
    ``errors``: {(group, bar label): 95% half-width}, drawn as error bars."""
    colors, ticks, width = {}, [], 0.8
    for g, (group, items) in enumerate(groups):
        n, x0 = max(1, len(items)), g * 1.2
        paper = dict((faint or {}).get(group, []))
        for i, (label, value) in enumerate(items):
            x = x0 + i * width / n
            new = label not in colors
            colors.setdefault(label, f"C{len(colors)}")
            if value is not None:
                err = (errors or {}).get((group, label))
                ax.bar(x, value, width / n * 0.9, color=colors[label], label=label if new else None,
                       yerr=err, capsize=3 if err else 0)
                ax.text(x, value + (err or 0) + 1, f"{value:.1f}", ha="center", fontsize=7)
            if paper.get(label) is not None:
                ax.bar(x, paper[label], width / n * 0.9, fill=False, edgecolor="gray", linestyle="--",
                       label="paper" if "paper" not in colors else None)
                colors.setdefault("paper", "gray")
        ticks.append(x0 + width / 2 - width / (2 * n))
    ax.set_xticks(ticks, labels=[g for g, _ in groups], fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    _legend_below(ax, ncol=3)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)


def application_figure(path, matrix, r2s_groups, paper_groups=None, suptitle="", caption="", errors=None):
    """Left: transfer heatmap (``matrix`` = (ks, rows, natural, title) or None); right: R2S bars."""
    fig = _figure(13.5, 6.4)
    left = fig.add_subplot(1, 2, 1)
    if matrix:
        heatmap(left, fig, *matrix)
    else:
        left.text(0.5, 0.5, "transfer matrix not finished", ha="center")
    bars(fig.add_subplot(1, 2, 2), r2s_groups, "R2S vs dense adversarial training", paper_groups, errors)
    _titles(fig, suptitle, caption, 150)
    fig.savefig(path, dpi=110)
    return path


def calibration_figure(path, panels, rule, paper, chosen, suptitle="", caption=""):
    """Per architecture: natural and PGD-20 accuracy (mean, 95% interval bars) against the radius; the
    band of PGD-20 values the rule accepts (natural minus the rule's drop range, per radius) shaded; the
    paper's CIFAR-10 drop drawn from each natural point as a dotted target; the chosen radius marked."""
    fig = _figure(5.0 * len(panels), 5.6)
    drop = paper.get("natural", 0) - paper.get("robust", 0) if paper.get("natural") is not None else None
    for i, p in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        xs = p["radii"]
        _curve(ax, "natural", xs, p["natural"], {"color": "C1", "yerr": p["natural_ci"]})
        _curve(ax, "PGD-20 (step eps/4)", xs, p["robust"], {"color": "C0", "yerr": p["robust_ci"]})
        nat = [v if v is not None else float("nan") for v in p["natural"]]
        ax.fill_between(xs, [n - rule[1] for n in nat], [n - rule[0] for n in nat], color="C2", alpha=0.15,
                        label=f"PGD-20 {rule[0]:g}-{rule[1]:g} points below natural (the rule)")
        if drop is not None:
            ax.plot(xs, [n - drop for n in nat], linestyle=":", color="gray",
                    label=f"natural - {drop:.1f} (the paper's CIFAR-10 drop)")
        if chosen is not None:
            ax.axvline(chosen, color="black", linewidth=0.8, label=f"chosen radius {chosen:g}/255")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, labels=[f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("radius eps (/255)")
        ax.set_ylabel("accuracy (%) of dense adversarial training")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
        ax.set_title(p["title"], fontsize=9)
    _titles(fig, suptitle, caption, 70 * len(panels))
    fig.savefig(path, dpi=110)
    return path
