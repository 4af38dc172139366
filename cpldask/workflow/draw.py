"""The graph of a reduction as a picture (``cpldask reduce --dry-run --graph x.png``).

Knows steps only by their ``name``, ``suffix``, ``unit`` and ``deps`` (see
:class:`cpldask.workflow.Step`): it imports nothing of the plan.
"""

from __future__ import annotations

import pathlib

from .classify import format_ranges

__all__ = ["draw_graph"]


def draw_graph(steps: list, units: tuple, path: pathlib.Path, *, unit_name: str = "unit") -> None:
    """The graph of ``steps`` (:class:`~cpldask.workflow.Step`) drawn with matplotlib:
    columns are stages (longest path from a start), one lane per unit (MUSE: IFU),
    calls over all units in a lane of their own below. Edges
    implied by others (bias -> twilight when bias -> ... -> wavecal -> twilight) are
    left out so that 24 IFUs stay readable."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    level: dict[int, int] = {}
    ancestors: dict[int, set[int]] = {}
    for s in steps:  # steps are in topological order
        level[id(s)] = 1 + max((level[id(d)] for d in s.deps), default=-1)
        ancestors[id(s)] = set().union(*[{id(d)} | ancestors[id(d)] for d in s.deps])
    edges = [(d, s) for s in steps for d in s.deps
             if not any(id(d) in ancestors[id(o)] for o in s.deps if o is not d)]
    # a lane per unit that has calls of its own (HAWK-I's detectors have none)
    split = [u for u in units if u is not None and any(s.unit == u for s in steps)]
    lanes = [*split, None]
    slot: dict[int, int] = {}
    depth = {lane: 1 for lane in lanes}
    taken: dict[tuple, int] = {}
    for s in steps:
        key = (s.unit, level[id(s)])
        slot[id(s)] = taken.get(key, 0)
        taken[key] = slot[id(s)] + 1
        depth[s.unit] = max(depth[s.unit], taken[key])
    # a row of two-line boxes (a suffix under the name) is taller
    row = 1.0 if any(getattr(s, "suffix", "") for s in steps) else 0.6
    top, y0 = {}, 0.0
    for lane in lanes:
        top[lane] = y0 + (0.4 if lane is None else 0.0)
        y0 = top[lane] + row * depth[lane] + 0.4
    pos = {id(s): (level[id(s)] * 1.0, top[s.unit] + row * slot[id(s)]) for s in steps}
    ncol = max(level.values(), default=0) + 1
    fig, ax = plt.subplots(figsize=(1.6 * ncol + 0.8, 0.42 * y0 + 1.0), dpi=100)
    ax.set_xlim(-0.6, ncol - 0.4)
    ax.set_ylim(y0, -0.6)
    ax.axis("off")
    boxes = {}
    for s in steps:
        x, y = pos[id(s)]
        name = s.name.split("_", 1)[-1] if "_" in s.name else s.name  # muse_bias: bias
        suffix = getattr(s, "suffix", "")  # the group/exposure or date that tells apart
        name = f"{name}\n{suffix}" if suffix else name
        text = name if s.unit is None else f"{name} {s.unit}"
        boxes[id(s)] = ax.text(x, y, text, ha="center", va="center", fontsize=7, zorder=3,
                               bbox={"boxstyle": "round,pad=0.3", "lw": 0.5, "ec": "0.3",
                                     "fc": "#f5d7a1" if s.unit is None else "#cfe3f7"})
    fig.canvas.draw()  # sizes the boxes, which clip the arrows below
    for d, s in edges:
        ax.annotate("", xy=pos[id(s)], xytext=pos[id(d)], zorder=2,
                    arrowprops={"arrowstyle": "-|>", "lw": 0.6, "color": "0.45",
                                "mutation_scale": 7, "shrinkA": 1, "shrinkB": 1,
                                "patchA": boxes[id(d)].get_bbox_patch(),
                                "patchB": boxes[id(s)].get_bbox_patch()})
    ax.set_title(f"{len(steps)} recipe calls" + (
        f", {unit_name}s {format_ranges(split)} (blue: one call per {unit_name}, orange: "
        f"one call over all {unit_name}s)" if split else ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
