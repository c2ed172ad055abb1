"""Where things go in the server-drawn SVG pictures: a definition's steps as a
dependency graph, and its run history as bars. Only coordinates here; the
templates (definition_graph.html, run_history.html) draw them, escaped like
everything else."""

from dataclasses import dataclass, field

from stepline.engine.definitions import Definition
from stepline.engine.states import JOB_STATUSES, failures_past

NODE_W, NODE_H = 168, 40      # a step box
COL_GAP, ROW_GAP = 56, 14     # between columns (dependency depth) and rows
PAD = 8


@dataclass
class Node:
    name: str
    type: str
    x: int
    y: int
    always_run: bool = False
    on_error: str = "fail"


@dataclass
class Graph:
    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)  # SVG path data, one per dependency


def dependency_graph(definition: Definition, tall: bool = False) -> Graph:
    """Steps left to right by depth (a step sits one column right of its
    deepest dependency), in file order top to bottom within a column. `tall`
    turns it a quarter: depth runs top to bottom, for a phone (three steps in a
    row are 632 px wide; a 390 px screen has 366)."""
    depth: dict[str, int] = {}
    for step in definition.steps:  # definitions are validated acyclic, deps listed first or not
        depth[step.name] = _depth(step.name, definition, depth)
    columns: dict[int, list] = {}
    for step in definition.steps:
        columns.setdefault(depth[step.name], []).append(step)
    # along: the depth axis (x, or y when tall); across: the other
    along, across = (NODE_H + COL_GAP, NODE_W + ROW_GAP) if tall else \
        (NODE_W + COL_GAP, NODE_H + ROW_GAP)
    places: dict[str, Node] = {}
    for col, steps in columns.items():
        for row, step in enumerate(steps):
            a, b = PAD + col * along, PAD + row * across
            places[step.name] = Node(step.name, step.type, *((b, a) if tall else (a, b)),
                                     step.always_run, step.on_error)
    edges = []
    bend = COL_GAP // 2
    for step in definition.steps:
        to = places[step.name]
        for dep in step.depends:
            frm = places[dep]
            if tall:  # from the bottom middle of the dependency to the top middle of the step
                x1, y1 = frm.x + NODE_W // 2, frm.y + NODE_H
                x2, y2 = to.x + NODE_W // 2, to.y
                edges.append(f"M{x1},{y1} C{x1},{y1 + bend} {x2},{y2 - bend} {x2},{y2}")
            else:  # from the right middle to the left middle
                x1, y1 = frm.x + NODE_W, frm.y + NODE_H // 2
                x2, y2 = to.x, to.y + NODE_H // 2
                edges.append(f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}")
    rows = max((len(steps) for steps in columns.values()), default=0)
    length = PAD * 2 + len(columns) * along - COL_GAP
    breadth = PAD * 2 + rows * across - ROW_GAP
    return Graph(width=breadth if tall else length, height=length if tall else breadth,
                 nodes=list(places.values()), edges=edges)


def _depth(name: str, definition: Definition, known: dict[str, int]) -> int:
    if name not in known:
        step = next(s for s in definition.steps if s.name == name)
        known[name] = 1 + max((_depth(d, definition, known) for d in step.depends), default=-1)
    return known[name]


BAR_W, BAR_GAP, CHART_H = 14, 4, 120


@dataclass
class Bar:
    job_id: str
    status: str
    x: int
    height: int
    seconds: float | None
    created: float
    steps_failed: int = 0  # a completed run past failed steps (on_error = continue) has some


@dataclass
class History:
    width: int
    height: int
    longest: float  # seconds: the scale's top
    bars: list[Bar] = field(default_factory=list)
    gap: int = BAR_GAP
    slot: int = BAR_W + BAR_GAP  # a bar's column: its link's tap target

    @property
    def statuses(self) -> list[str]:
        """The outcomes drawn, for the legend; "with-failures": completed past failed steps."""
        seen = {"with-failures" if failures_past(b.status, b.steps_failed) else b.status
                for b in self.bars}
        return [s for s in (*JOB_STATUSES, "with-failures") if s in seen]


def run_history(runs: list[dict], now: float) -> History:
    """One bar per run, oldest left; its height is the run's duration (a
    running job's so far), its class the outcome."""
    runs = sorted(runs, key=lambda r: r["created"])
    seconds = [((r["finished"] or now) - r["started"]) if r["started"] else None for r in runs]
    longest = max((s for s in seconds if s is not None), default=0.0) or 1.0
    bars = [Bar(r["id"], r["status"], PAD + i * (BAR_W + BAR_GAP),
                max(2, round(CHART_H * (s or 0) / longest)), s, r["created"],
                r.get("steps_failed") or 0)
            for i, (r, s) in enumerate(zip(runs, seconds, strict=True))]
    return History(width=PAD * 2 + len(bars) * (BAR_W + BAR_GAP), height=CHART_H + PAD * 2,
                   longest=longest, bars=bars)


# The timeline is as wide as the page (a phone's too): x and widths are
# percentages of it; heights and text are pixels.
ROW_H, AXIS_H = 30, 18       # a row: the step's name and duration, its bar under them
TIMELINE_MAX_BARS = 100      # a 1,000-step job draws its first 100 started steps


@dataclass
class Span:
    name: str
    status: str
    y: int                    # the row's top
    x: float                  # % of the width
    width: float              # %
    seconds: float
    label_x: float            # %: the name sits over the bar's start, or ends over its end
    anchor: str               # "start" | "end" (bars in the right half)
    since: float | None = None  # a running bar's start: the page's ticker counts its duration


@dataclass
class Timeline:
    height: int
    seconds: float            # the axis's length: first start to last finish (or now)
    ticks: list[tuple[float, float]] = field(default_factory=list)  # (x %, seconds)
    spans: list[Span] = field(default_factory=list)
    hidden: int = 0           # started steps left out (over TIMELINE_MAX_BARS)
    t0: float = 0.0           # the first start
    live: bool = False        # a step runs: the axis ends at `now`, and the page's ticker
                              # stretches it on (static/stepline.js, stepline.growTimelines)


def timeline(steps: list[dict], now: float) -> Timeline:
    """A Gantt chart: one bar per started step, in step order, from its start
    to its finish (a running step's to `now`); pending and skipped steps
    have none. Time runs left to right from the first start."""
    started = [s for s in steps if s["started"]]
    shown = started[:TIMELINE_MAX_BARS]
    if not shown:
        return Timeline(height=0, seconds=0.0)
    t0 = min(s["started"] for s in started)
    total = max(max((s["finished"] or now) for s in started) - t0, 0.001)
    spans = []
    for row, s in enumerate(shown):
        seconds = max(0.0, (s["finished"] or now) - s["started"])
        width = round(max(0.5, 100 * seconds / total), 2)  # 0.5 %: a 0.0 s step still shows
        # ...and stays inside the axis: a 0.0 s last step starts at 100 %
        x = round(min(100 * (s["started"] - t0) / total, 100 - width), 2)
        left_half = x <= 50
        spans.append(Span(s["name"], s["status"], AXIS_H + row * ROW_H, x, width, seconds,
                          x if left_half else round(x + width, 2),
                          "start" if left_half else "end",
                          None if s["finished"] else s["started"]))
    ticks = [(25.0 * i, total * i / 4) for i in range(5)]
    return Timeline(height=AXIS_H + len(shown) * ROW_H + PAD, seconds=total, ticks=ticks,
                    spans=spans, hidden=len(started) - len(shown), t0=t0,
                    live=any(not s["finished"] for s in started))
