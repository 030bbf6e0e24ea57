"""``pipeline-models report``: the lifecycle graph with how often each edge was seen.

A fuzz session and a pytest run each save what their machines observed (transition
kinds, lifecycle edges, forbidden edges, events) as JSON under ``.pipeline-models/``;
the report reads one or more of them and draws the nine stages as an SVG, every edge
labelled with its count (forbidden edges in red), beside a Markdown table::

    >>> counts = Counts(edges={"queued/queued -> queued/working": 3})
    >>> "queued" in render_svg(counts)
    True
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from pipeline_models.lifecycle import Stage, TransitionKind
from pipeline_models.tables import format_table

DEFAULT_DIRECTORY = Path(".pipeline-models")


class _Statistics(Protocol):
    examples: int
    rules: int
    transitions: Counter[TransitionKind]
    events: Counter[str]


@dataclass
class Counts:
    """What one or more runs observed."""

    sources: list[str] = field(default_factory=list)
    examples: int = 0
    rules: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    edges: Counter[str] = field(default_factory=Counter)  # "stage/state -> stage/state"
    forbidden: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.sources += other.sources
        self.examples += other.examples
        self.rules += other.rules
        for mine, theirs in (
            (self.transitions, other.transitions),
            (self.edges, other.edges),
            (self.forbidden, other.forbidden),
            (self.events, other.events),
        ):
            mine.update(theirs)


def counts_from(statistics: _Statistics, *, source: str) -> Counts:
    """The counts of a run's :data:`~pipeline_models.machines.STATISTICS`."""
    events = Counter(dict(statistics.events))
    return Counts(
        sources=[source],
        examples=statistics.examples,
        rules=statistics.rules,
        transitions=Counter({str(k): v for k, v in statistics.transitions.items()}),
        edges=Counter({k[len("edge ") :]: v for k, v in events.items() if k.startswith("edge ")}),
        forbidden=Counter(
            {k[len("forbidden edge ") :]: v for k, v in events.items() if k.startswith("forbidden")}
        ),
        events=events,
    )


def save_counts(counts: Counts, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "sources": counts.sources,
        "examples": counts.examples,
        "rules": counts.rules,
        "transitions": dict(counts.transitions),
        "edges": dict(counts.edges),
        "forbidden": dict(counts.forbidden),
        "events": dict(counts.events),
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def save_statistics(statistics: _Statistics, path: Path, *, source: str) -> Path:
    """Write a run's counts to ``path`` (JSON) for a later report."""
    return save_counts(counts_from(statistics, source=source), path)


def load_counts(paths: list[Path]) -> Counts:
    total = Counts()
    for path in paths:
        data: dict[str, Any] = json.loads(path.read_text())
        total.add(
            Counts(
                sources=list(data.get("sources", [str(path)])),
                examples=int(data.get("examples", 0)),
                rules=int(data.get("rules", 0)),
                transitions=Counter(data.get("transitions", {})),
                edges=Counter(data.get("edges", {})),
                forbidden=Counter(data.get("forbidden", {})),
                events=Counter(data.get("events", {})),
            )
        )
    return total


def transition_lines(
    seen: Mapping[Any, int],  # by kind, or by its value (a StrEnum: the same keys)
    kinds: Sequence[TransitionKind],
    *,
    drained: Sequence[TransitionKind] = (),
) -> list[str]:
    """How often each of ``kinds`` (the transitions a machine's rules make) was seen, as
    a table; then any other kind that was seen, which is never left out: those the
    drains make (``drained``), and anything else.

    >>> lines = transition_lines({"claim": 3, "webhook": 1}, [TransitionKind.CLAIM],
    ...                          drained=[TransitionKind.WEBHOOK])
    >>> for line in lines:
    ...     print(line)
    transition  seen
    ----------  ----
    claim          3
    also seen, made by the drains: webhook 1
    """
    lines = [format_table(["transition", "seen"], [[k.value, seen.get(k, 0)] for k in kinds])]
    others = [kind for kind in TransitionKind if kind not in kinds and seen.get(kind, 0)]
    for label, group in (
        ("also seen, made by the drains", [kind for kind in others if kind in drained]),
        ("also seen", [kind for kind in others if kind not in drained]),
    ):
        if group:
            lines.append(f"{label}: {', '.join(f'{k.value} {seen.get(k, 0)}' for k in group)}")
    return lines


def _stages_of(edge: str) -> tuple[str, str]:
    before, after = edge.split(" -> ")
    return before.split("/")[0], after.split("/")[0]


def render_markdown(counts: Counts) -> str:
    """The allowed transitions and every observed edge, as Markdown tables."""
    lines = [
        f"Observed over {counts.examples} examples and {counts.rules} rules "
        f"({', '.join(counts.sources) or 'no runs'}).",
        "",
        "| transition | seen |",
        "|---|---:|",
        *(f"| {kind.value} | {counts.transitions[kind.value]} |" for kind in TransitionKind),
        "",
        "| edge (stage/state -> stage/state) | seen | allowed |",
        "|---|---:|---|",
    ]
    for edge, seen in sorted(counts.edges.items()):
        lines.append(f"| {edge} | {seen} | yes |")
    for edge, seen in sorted(counts.forbidden.items()):
        lines.append(f"| {edge} | {seen} | **no** |")
    if not counts.forbidden:
        lines += ["", "No forbidden transition was seen."]
    return "\n".join(lines) + "\n"


_BOX_WIDTH, _BOX_HEIGHT, _GAP, _MARGIN = 130, 44, 40, 30


def render_svg(counts: Counts) -> str:
    """The nine stages left to right; arrows between stages carry the count of moves to the
    next stage, loops the moves within a stage (claims, batches, retries); red is forbidden."""
    stages = [stage.value for stage in Stage]
    x_of = {name: _MARGIN + index * (_BOX_WIDTH + _GAP) for index, name in enumerate(stages)}
    top = 110
    width = _MARGIN * 2 + len(stages) * _BOX_WIDTH + (len(stages) - 1) * _GAP
    height = 330
    within: Counter[str] = Counter()
    between: Counter[tuple[str, str]] = Counter()
    for edge, seen in counts.edges.items():
        before, after = _stages_of(edge)
        if before == after:
            within[before] += seen
        else:
            between[before, after] += seen
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
        "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z'/></marker>"
        "<marker id='red' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
        "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
        "fill='#c00'/></marker></defs>",
        f'<text x="{_MARGIN}" y="24" font-size="15" font-weight="bold">Job lifecycle: '
        f"transitions observed ({counts.examples} examples, {counts.rules} rules)</text>",
        f'<text x="{_MARGIN}" y="44" fill="#555">above each box: moves within the stage; '
        "on each arrow: moves to the next stage; red: forbidden</text>",
    ]
    for name in stages:
        x = x_of[name]
        done = " / done" if name == Stage.EMBEDDED.value else ""
        parts.append(
            f'<rect x="{x}" y="{top}" width="{_BOX_WIDTH}" height="{_BOX_HEIGHT}" rx="8" '
            f'fill="#eef4ff" stroke="#335"/><text x="{x + _BOX_WIDTH / 2}" y="{top + 27}" '
            f'text-anchor="middle">{escape(name + done)}</text>'
        )
        loop = within[name]
        colour = "#335" if loop else "#bbb"
        parts.append(
            f'<path d="M{x + 40},{top} C{x + 40},{top - 45} {x + 90},{top - 45} {x + 90},{top}" '
            f'fill="none" stroke="{colour}" marker-end="url(#arrow)"/>'
            f'<text x="{x + 65}" y="{top - 40}" text-anchor="middle">{loop}</text>'
        )
    for before, after in pairwise(stages):
        seen = between[before, after]
        x1, x2 = float(x_of[before] + _BOX_WIDTH), float(x_of[after])
        y = top + _BOX_HEIGHT / 2
        colour = "#335" if seen else "#bbb"
        parts.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" '
            f'marker-end="url(#arrow)"/><text x="{(x1 + x2) / 2}" y="{y - 6}" '
            f'text-anchor="middle">{seen}</text>'
        )
    row = top + _BOX_HEIGHT + 40
    for index, (edge, seen) in enumerate(sorted(counts.forbidden.items())):
        before, after = _stages_of(edge)
        if before not in x_of or after not in x_of:
            continue
        x1 = x_of[before] + _BOX_WIDTH / 2
        x2 = x_of[after] + _BOX_WIDTH / 2 + (8 if before == after else 0)
        depth = top + _BOX_HEIGHT + 30 + 12 * index
        parts.append(
            f'<path d="M{x1},{top + _BOX_HEIGHT} C{x1},{depth + 30} {x2},{depth + 30} '
            f'{x2},{top + _BOX_HEIGHT}" fill="none" stroke="#c00" marker-end="url(#red)"/>'
        )
        parts.append(
            f'<text x="{_MARGIN}" y="{row + 60 + 16 * index}" fill="#c00">forbidden '
            f"{escape(edge)}: {seen}</text>"
        )
    if not counts.forbidden:
        parts.append(
            f'<text x="{_MARGIN}" y="{row + 60}" fill="#070">no forbidden transition seen</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_report(paths: list[Path], output: Path) -> tuple[Path, Path]:
    """Read the runs' JSON files; write ``output``.svg and ``output``.md; their paths."""
    counts = load_counts(paths)
    svg, markdown = output.with_suffix(".svg"), output.with_suffix(".md")
    output.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(render_svg(counts))
    markdown.write_text(
        f"# Lifecycle transitions\n\n![lifecycle graph]({svg.name})\n\n" + render_markdown(counts)
    )
    return svg, markdown


__all__ = [
    "DEFAULT_DIRECTORY",
    "Counts",
    "counts_from",
    "load_counts",
    "render_markdown",
    "render_svg",
    "save_counts",
    "save_statistics",
    "transition_lines",
    "write_report",
]
