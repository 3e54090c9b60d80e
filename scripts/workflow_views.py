"""Frame the example workflows and draw their thumbnails.

For every UI-format workflow in ``example_workflows/`` this sets the saved view
(``extra.ds``: offset and scale) so that the whole graph, title bars included, fits a
1280 x 720 canvas below ComfyUI's menu bar, and writes ``<name>.jpg``: a diagram of the graph
(one box per node, its type and title, the links between them) that ComfyUI's template browser
shows as the thumbnail.

    python scripts/workflow_views.py [--check]

``--check`` changes nothing and exits 1 when a saved view or a thumbnail is missing or stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "example_workflows"
CANVAS = (1280, 720)  # the canvas a laptop's browser window leaves (pixels)
MARGIN = 40  # pixels around the graph
MENU = 60  # the menu bar's height over the canvas (pixels)
TITLE = 30  # a node's title bar sits this far above its position (canvas units)


def graph_box(workflow: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of every node, title bars included, in canvas units."""
    nodes = workflow["nodes"]
    return (min(n["pos"][0] for n in nodes), min(n["pos"][1] for n in nodes) - TITLE,
            max(n["pos"][0] + n["size"][0] for n in nodes),
            max(n["pos"][1] + n["size"][1] for n in nodes))


def framed_view(workflow: dict) -> dict:
    """The ``extra.ds`` that shows the whole graph on the canvas, under the menu bar.

    The canvas draws a point p at (p + offset) * scale on screen."""
    left, top, right, bottom = graph_box(workflow)
    width, height = CANVAS
    scale = min((width - 2 * MARGIN) / (right - left),
                (height - MENU - 2 * MARGIN) / (bottom - top), 1.0)
    scale = round(scale, 3)
    return {"scale": scale, "offset": [round(MARGIN / scale - left, 1),
                                       round((MENU + MARGIN) / scale - top, 1)]}


def draw_thumbnail(workflow: dict, out: Path) -> Path:
    """A diagram of the graph as a JPEG (matplotlib draws a PNG; PyAV turns it into JPEG)."""
    from matplotlib.patches import FancyBboxPatch

    from selva_core.evaluation.report import _figure
    from selva_core.media import write_poster

    left, top, right, bottom = graph_box(workflow)
    fig = _figure(8.0, 8.0 * 0.6)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(left - 40, right + 40)
    ax.set_ylim(bottom + 40, top - 40)
    ax.set_aspect("auto")
    ax.axis("off")
    fig.patch.set_facecolor("#202020")
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for link in workflow["links"]:
        _, src, _, dst, _, _ = link
        a, b = by_id[src], by_id[dst]
        ax.annotate("", xy=(b["pos"][0], b["pos"][1] + 20),
                    xytext=(a["pos"][0] + a["size"][0], a["pos"][1] + 20),
                    arrowprops={"arrowstyle": "->", "color": "#9fc5e8", "lw": 1.5,
                                "connectionstyle": "arc3,rad=0.1"})
    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        selva = n["type"].startswith("SelVA")
        ax.add_patch(FancyBboxPatch((x, y - TITLE), w, h + TITLE, boxstyle="round,pad=4",
                                    facecolor="#35506b" if selva else "#3a3a3a",
                                    edgecolor="#e0e0e0", lw=1))
        kind = n["type"].removeprefix("SelVA")
        title = n.get("title") or ("SelVA " if selva else "") + re.sub(
            r"(?<=[a-z])(?=[A-Z])", " ", kind)
        ax.text(x + 10, y - TITLE / 2, textwrap.fill(title, max(8, int(w / 22))),
                color="white", fontsize=9, va="top", fontweight="bold")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "graph.png"
        fig.savefig(png, facecolor=fig.get_facecolor())
        return write_poster(png, out, width=720)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a view is stale or a thumbnail missing")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(FOLDER.glob("*.json")):
        workflow = json.loads(path.read_text())
        view = framed_view(workflow)
        thumb = path.with_suffix(".jpg")
        if workflow.get("extra", {}).get("ds") != view:
            stale.append(f"{path.name}: saved view {workflow.get('extra', {}).get('ds')} "
                         f"!= {view}")
            if not args.check:
                workflow.setdefault("extra", {})["ds"] = view
                path.write_text(json.dumps(workflow, indent=1) + "\n")
        if not thumb.is_file():
            stale.append(f"{thumb.name}: missing")
            if not args.check:
                draw_thumbnail(workflow, thumb)
    for line in stale:
        print(line)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
