"""Result plots (PNG). matplotlib is imported inside each function and figures are
drawn on an Agg canvas without pyplot, so importing this module (or plotting)
changes no global matplotlib state and needs no display.
"""


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def heatmap(matrix, row_labels, col_labels, path, title="", value_label="accuracy (%)"):
    """Annotated heatmap of ``matrix`` (rows x cols of percentages) saved to ``path``."""
    heatmaps([("", matrix)], row_labels, col_labels, path, title=title, value_label=value_label)


def heatmaps(panels, row_labels, col_labels, path, title="", value_label="accuracy (%)"):
    """Side-by-side annotated heatmaps, one per ``(panel title, matrix)``, on one colour scale (0-100)."""
    import numpy as np

    n = len(panels)
    fig = _figure(n * (1.6 + 1.1 * len(col_labels)) + 1.0, 2.0 + 0.6 * len(row_labels))
    image = None
    for p, (panel_title, matrix) in enumerate(panels):
        data = np.asarray(matrix, dtype=float).reshape(len(row_labels), len(col_labels))
        ax = fig.add_subplot(1, n, p + 1)
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
        ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=30, ha="right")
        ax.set_yticks(range(len(row_labels)), labels=row_labels if p == 0 else [""] * len(row_labels))
        ax.set_xlabel("target ticket (evaluated)")
        if p == 0:
            ax.set_ylabel("source ticket (attacked)")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                # dark text on the bright end of viridis, light text elsewhere
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center",
                        color="black" if data[i, j] > 60 else "white", fontsize=9)
        ax.set_title(panel_title, fontsize=9)
    fig.colorbar(image, ax=fig.axes, label=value_label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def robust_vs_k(ks, natural, robust, path, robust_label="PGD-20", title="", hlines=None, curves=None):
    """Natural and robust accuracy (%) against k (fraction kept, log scale) saved to ``path``.

    ``hlines`` maps a label to a horizontal reference value (e.g. R2S accuracies);
    ``curves`` maps a label to one more value per k (None: no point there).
    """
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    xs = [ks[i] for i in order]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, [natural[i] for i in order], "o-", label="natural")
    if robust is not None:
        ax.plot(xs, [robust[i] for i in order], "s-", label=robust_label)
    for label, values in (curves or {}).items():
        ax.plot(xs, [float("nan") if values[i] is None else values[i] for i in order], "^-", label=label)
    for n, (label, value) in enumerate((hlines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{n + 2 + len(curves or {})}", label=label)
    if len(xs) > 1 and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xticks(xs, labels=[f"{k:g}" for k in xs])
    ax.minorticks_off()
    ax.set_xlabel("k (fraction of weights kept)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
