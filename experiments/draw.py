"""Paper-style panels (PNG), drawn on an Agg canvas without pyplot (no global state).

A k-panel is a dict: ``title``; ``curves``: list of ``(label, ks, values, style)``
with ``style`` a dict of matplotlib line options; ``hlines``: list of
``(label, value, style)``; ``faint``: the same two kinds of entries for the
paper's values (``("curve", label, ks, values)`` or ``("hline", label, value)``),
drawn pale; ``ylabel``.
"""
import textwrap

FAINT = {"alpha": 0.35, "linewidth": 1.0}


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def k_axis(ax, ks):
    ks = sorted(set(ks))
    if len(ks) > 1 and min(ks) > 0:
        ax.set_xscale("log")
    if ks:
        ax.set_xticks(ks, labels=[f"{k:g}" for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (remaining ratio: fraction of weights kept)")


def k_panel(ax, panel):
    ks = []
    for label, xs, ys, style in panel.get("curves", []):
        if xs:
            ax.plot(xs, ys, label=label, **dict({"marker": "o"}, **style))
            ks += xs
    for label, value, style in panel.get("hlines", []):
        if value is not None:
            ax.axhline(value, label=label, **dict({"linestyle": "--"}, **style))
    for entry in panel.get("faint", []):
        color = entry[-1] if isinstance(entry[-1], str) and entry[-1].startswith("C") else "gray"
        if entry[0] == "curve":
            ax.plot(entry[2], entry[3], marker="x", linestyle=":", color=color, label=entry[1], **FAINT)
        else:
            ax.axhline(entry[2], linestyle="-.", color=color, label=entry[1], **FAINT)
    k_axis(ax, ks)
    ax.set_ylabel(panel.get("ylabel", "accuracy (%)"))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(panel.get("title", ""), fontsize=9)


def k_panels(path, panels, suptitle=""):
    """k-panels side by side, three to a row."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.6 * cols, 4.2 * rows)
    for i, panel in enumerate(panels):
        k_panel(fig.add_subplot(rows, cols, i + 1), panel)
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, 75 * cols), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def heatmap(ax, fig, ks, rows, natural, title):
    """Annotated source x target matrix, natural accuracy as the top row."""
    import numpy as np

    data = np.asarray([natural] + rows, dtype=float)
    image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(len(ks)), labels=[f"{k:g}" for k in ks])
    ax.set_yticks(range(len(rows) + 1), labels=["natural"] + [f"{k:g}" for k in ks])
    ax.axhline(0.5, color="white", linewidth=2)
    ax.set_xlabel("target ticket k (evaluated)")
    ax.set_ylabel("source ticket k (attacked)")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if data[i, j] > 60 else "white",
                    fontweight="bold" if i > 0 and i - 1 == j else "normal")
    fig.colorbar(image, ax=ax, label="accuracy (%)", fraction=0.046)
    ax.set_title(title, fontsize=9)


def bars(ax, groups, title, faint=None):
    """Grouped bars: ``groups`` = [(group label, [(bar label, value), ...])]; one colour per bar label;
    ``faint``: the paper's values, {group label: [(bar label, value), ...]}, drawn as dashed outlines."""
    colors, ticks, width = {}, [], 0.8
    for g, (group, items) in enumerate(groups):
        n, x0 = max(1, len(items)), g * 1.2
        paper = dict((faint or {}).get(group, []))
        for i, (label, value) in enumerate(items):
            x = x0 + i * width / n
            new = label not in colors
            colors.setdefault(label, f"C{len(colors)}")
            if value is not None:
                ax.bar(x, value, width / n * 0.9, color=colors[label], label=label if new else None)
                ax.text(x, value + 1, f"{value:.1f}", ha="center", fontsize=7)
            if paper.get(label) is not None:
                ax.bar(x, paper[label], width / n * 0.9, fill=False, edgecolor="gray", linestyle="--",
                       label="paper" if "paper" not in colors else None)
                colors.setdefault("paper", "gray")
        ticks.append(x0 + width / 2 - width / (2 * n))
    ax.set_xticks(ticks, labels=[g for g, _ in groups], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)


def application_figure(path, matrix, r2s_groups, paper_groups=None, suptitle=""):
    """Left: transfer heatmap (``matrix`` = (ks, rows, natural, title) or None); right: R2S bars."""
    fig = _figure(12.5, 5.0)
    left = fig.add_subplot(1, 2, 1)
    if matrix:
        heatmap(left, fig, *matrix)
    else:
        left.text(0.5, 0.5, "transfer matrix not finished", ha="center")
    bars(fig.add_subplot(1, 2, 2), r2s_groups, "R2S vs dense adversarial training", paper_groups)
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
