"""The human-evaluation figure (like the paper's Figure 2b): one model's win rates against every other
model, grouped by opponent, one bar per objective, ties stacked on top (hatched).

Uses :class:`matplotlib.figure.Figure` directly (no pyplot state), so the web server can draw it from
any request thread.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from molma.humaneval.analysis import StudyResults

PALETTE = ("#3b6ea8", "#d9822b", "#4f9a5a", "#b0474f", "#7d5ba6", "#8c6d46", "#c05f9b", "#6b7780")


def win_rate_figure(results: StudyResults, model: str) -> Figure:
    """Grouped bars of ``model``'s human win rate (and tie rate) against each other model per objective."""
    if model not in results.models:
        raise ValueError(f"unknown model {model!r}; models: {', '.join(results.models)}")
    opponents = [m for m in results.models if m != model]
    n_obj = len(results.objectives)
    width = 0.8 / max(1, n_obj)
    fig = Figure(figsize=(max(5.0, 1.4 * len(opponents) + 2.0), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j, obj in enumerate(results.objectives):
        color = PALETTE[j % len(PALETTE)]
        xs, wins, ties = [], [], []
        for i, other in enumerate(opponents):
            pair = results.human.get(obj.key, {}).get((model, other))
            if pair is None or pair.n == 0:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            wins.append(pair.win_rate or 0.0)
            ties.append(pair.tie_rate or 0.0)
        bars = ax.bar(xs, wins, width * 0.92, color=color)
        ax.bar(
            xs,
            ties,
            width * 0.92,
            bottom=wins,
            color=color,
            alpha=0.28,
            hatch="///",
            edgecolor=color,
            linewidth=0,
        )
        for bar, value in zip(bars, wins):
            ax.annotate(
                f"{value:.0%}",
                (bar.get_x() + bar.get_width() / 2, value),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#222",
            )
    ax.axhline(0.5, color="#666", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(opponents)))
    ax.set_xticklabels([f"vs {o}" for o in opponents], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0%", "25%", "50%", "75%", "100%"], fontsize=8)
    ax.set_ylabel("win rate (human)", fontsize=9)
    ax.set_title(f"Human evaluation: {model} vs. other models", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [
        Patch(facecolor=PALETTE[j % len(PALETTE)], label=f"{obj.label} win")
        for j, obj in enumerate(results.objectives)
    ]
    handles.append(Patch(facecolor="#dddddd", edgecolor="#888888", hatch="///", label="tie"))
    ax.legend(
        handles=handles,
        fontsize=7,
        frameon=False,
        ncol=n_obj + 1,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
    )
    if not any(results.ranked_prompts.values()):
        ax.text(0.5, 0.5, "no rankings yet", transform=ax.transAxes, ha="center", va="center", color="#888")
    fig.tight_layout()
    return fig


_SVG_NAMESPACES = {
    "": "http://www.w3.org/2000/svg",
    "xlink": "http://www.w3.org/1999/xlink",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://creativecommons.org/ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
}


def _declarations(css: str) -> list[tuple[str, str]]:
    pairs = (d.split(":", 1) for d in css.split(";") if ":" in d)
    return [(k.strip(), v.strip()) for k, v in pairs if k.strip()]


def svg_without_inline_styles(svg: bytes) -> bytes:
    """The SVG with every ``style="..."`` attribute and ``<style>`` element turned into presentation
    attributes (``fill="#3b6ea8"``), which a ``style-src`` Content-Security-Policy does not block: served
    under the web app's CSP, matplotlib's inline styles are dropped and the figure renders black."""
    for prefix, uri in _SVG_NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(svg)
    parents = {child: parent for parent in root.iter() for child in parent}
    for element in list(root.iter()):
        if element.tag == f"{{{_SVG_NAMESPACES['']}}}style":
            for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", element.text or ""):
                if selector.strip() == "*":  # matplotlib's only rule; inherited from the root alike
                    for key, value in _declarations(body):
                        root.set(key, value)
            parents[element].remove(element)
        elif "style" in element.attrib:
            for key, value in _declarations(element.attrib.pop("style")):
                element.set(key, value)  # a style declaration overrides the attribute
    return b'<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                                     xml_declaration=False)


def render_win_rate_figure(results: StudyResults, model: str, fmt: str) -> bytes:
    """The figure as ``png`` or ``svg`` bytes (the SVG with presentation attributes instead of inline
    styles, so it renders under a strict Content-Security-Policy)."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"format must be png or svg, got {fmt!r}")
    buf = io.BytesIO()
    win_rate_figure(results, model).savefig(buf, format=fmt)
    return svg_without_inline_styles(buf.getvalue()) if fmt == "svg" else buf.getvalue()


def save_win_rate_figure(results: StudyResults, model: str, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns both paths."""
    paths = []
    for fmt in ("png", "svg"):
        path = Path(f"{stem}.{fmt}")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(render_win_rate_figure(results, model, fmt))
        tmp.replace(path)
        paths.append(path)
    return paths
