"""PNG drawings of cells: each cell as a DAG (inputs left, intermediate nodes, output right),
edges labelled with their op; two architectures side by side for comparison."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

from .genotype import Family, Genotype, output_nodes

OP_COLORS = {"skip_connect": "#2b8a3e", "null": "#adb5bd"}


def _positions(num_nodes: int) -> dict:
    pos = {0: (0.0, 0.75), 1: (0.0, 0.25)}
    for i in range(num_nodes):
        pos[i + 2] = (1.0 + i, 0.5 + (0.3 if i % 2 == 0 else -0.3))
    pos["out"] = (num_nodes + 1.0, 0.5)
    return pos


def draw_cell(ax, edges, concat, family: Family, title: str) -> None:
    b = family.num_nodes
    pos = _positions(b)
    names = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}
    for node, (x, y) in pos.items():
        label = names.get(node, str(node - 2) if isinstance(node, int) else node)
        color = "#e7f5ff" if node in (0, 1) else "#fff3bf" if node == "out" else "#f1f3f5"
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="#495057"))
    for k, (op, f, t) in enumerate(edges):
        (x0, y0), (x1, y1) = pos[f], pos[t]
        bend = 0.25 if k % 2 else -0.25
        style = dict(arrowstyle="->", color=OP_COLORS.get(op, "#1c7ed6"),
                     linestyle="dotted" if op == "null" else "solid",
                     connectionstyle=f"arc3,rad={bend}", shrinkA=12, shrinkB=12, lw=1.2)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=style)
        # Midpoint of matplotlib's arc3 Bezier curve: the chord midpoint pushed out by rad / 2.
        lx, ly = (x0 + x1) / 2 + 0.5 * bend * (y1 - y0), (y0 + y1) / 2 - 0.5 * bend * (x1 - x0) * 0.3
        ax.text(lx, ly, op, fontsize=6.5, ha="center", va="center", color=OP_COLORS.get(op, "#1864ab"),
                bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.8))
    for node in output_nodes(edges, concat, family):
        ax.annotate("", xy=pos["out"], xytext=pos[node],
                    arrowprops=dict(arrowstyle="->", color="#868e96", lw=0.8, shrinkA=12, shrinkB=14))
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.6, b + 1.6)
    ax.set_ylim(-0.1, 1.1)
    ax.axis("off")


def draw(archs: Sequence[Tuple[str, Genotype, Family]], path: str, costs: Optional[Sequence[str]] = None) -> str:
    """Draw each (label, genotype, family) as a row (normal and reduction cell) into a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("drawing needs matplotlib: pip install matplotlib") from exc
    fig, axes = plt.subplots(len(archs), 2, figsize=(14, 3.2 * len(archs)), squeeze=False)
    for row, (label, g, family) in enumerate(archs):
        suffix = f"  ({costs[row]})" if costs else ""
        draw_cell(axes[row][0], g.normal, g.normal_concat, family, f"{label}: normal cell{suffix}")
        draw_cell(axes[row][1], g.reduce, g.reduce_concat, family, f"{label}: reduction cell")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
