"""Sample outputs in the README and the docs, produced by their commands.

Every output shown in README.md or docs/*.md sits in a fenced block right after a
marker that names the command producing it:

    <!-- sample: pipeline-models check --seed 3 --max-examples 10 -->
    ```
    $ pipeline-models check --seed 3 --max-examples 10
    ...what it printed...
    ```

Flags may stand between ``sample`` and the colon, separated by spaces:

- ``exit=N``: the exit status the command must end with (default 0);
- ``stderr``: what the command writes on stderr is part of the sample, except the
  progress lines of ``check``, ``mutants``, ``fuzz`` and ``repro``
  (``pipeline_models.progress``: how many a run prints, and what they say, depend on
  its timing; on a terminal the line is erased when the report comes);
- ``slow``: rerun only with ``--slow`` (the full regeneration);
- ``findings``: only the findings' first lines are compared (``N. [invariant] ...``,
  without worker names and job numbers), for a search bounded by time (Hypothesis
  shrinks for a bounded time, and looks for more causes for ten seconds after the
  first), whose programs, and even which causes it reaches, depend on the machine's
  speed: every cause a fresh run reports must be shown.

A ``<!-- record: COMMAND -->`` marker instead keeps a measurement as it was taken (a
run of an hour, or a HypoFuzz session whose draws depend on timing); it is not rerun
here, but its command is checked to be a real command with real options (see
``tests/docs/``), and the text beside it says when and how it was measured.

    python scripts/samples.py            # rerun every quick sample, rewrite what changed
    python scripts/samples.py --check    # exit 1 if a block differs from a fresh run
    python scripts/samples.py --slow     # the slow samples too

The commands run from the repository root without ``DATABASE_URL`` (each on its own
embedded Postgres, as a newcomer's first run does), unless ``--database-url`` is given.
Blocks are compared after volatile figures are normalised (durations, rates, ports,
process ids, temporary paths, random ids, which server); a rewrite keeps a block whose
normalised text is unchanged, so timings do not churn.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs")
MARKER = re.compile(r"^<!-- (sample|record)((?: [a-z]+(?:=\d+)?)*): (.+?) -->\s*$")
FENCE = re.compile(r"^(```+|~~~+)[\w-]*\s*$")
FLAGS = {"exit", "stderr", "slow", "findings"}
# A plain progress line on stderr (pipeline_models.progress.render, and its last line's
# ending): "check: 23 examples, 153 rules/s, transitions 13 of 13, 10 s; done".
PROGRESS = re.compile(
    r"^(?:check|mutants|fuzz|repro): .*\b\d+ s"
    r"(?:; (?:done|stopped by Ctrl-C|ended by an error))?$"
)
TIMEOUT = 900


class SampleError(Exception):
    """A marker that is not followed by a fenced block, or has an unknown flag."""


@dataclass
class Block:
    """One marked block: where it is, what produces it, and what it shows now."""

    path: Path
    kind: str  # "sample" or "record"
    command: str
    flags: dict[str, str]
    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    body: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.start}"

    @property
    def expected_exit(self) -> int:
        return int(self.flags.get("exit", "0"))

    @property
    def slow(self) -> bool:
        return "slow" in self.flags

    def words(self) -> list[str]:
        """The command as argv (its program and options), for checks of the CLI."""
        return shlex.split(self.command)


def markdown_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for name in DOCUMENTS:
        path = root / name
        files += sorted(path.rglob("*.md")) if path.is_dir() else [path]
    return files


def blocks_in(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    inside: str | None = None  # the fence of the block being read: markers in it are text
    for index, line in enumerate(lines):
        fence_line = FENCE.match(line)
        if inside is not None:
            if line.strip() == inside:
                inside = None
            continue
        if fence_line is not None:
            inside = fence_line.group(1)
            continue
        marker = MARKER.match(line)
        if marker is None:
            continue
        kind, flag_text, command = marker.groups()
        flags: dict[str, str] = {}
        for flag in flag_text.split():
            name, _, value = flag.partition("=")
            if name not in FLAGS:
                raise SampleError(f"{path}:{index + 1}: unknown flag {name!r}")
            flags[name] = value
        opening = index + 1
        fence = FENCE.match(lines[opening]) if opening < len(lines) else None
        if fence is None:
            raise SampleError(f"{path}:{index + 1}: a {kind} marker must precede a fenced block")
        closing = next(
            (
                number
                for number in range(opening + 1, len(lines))
                if lines[number].strip() == fence.group(1)
            ),
            None,
        )
        if closing is None:
            raise SampleError(f"{path}:{opening + 1}: the fenced block is not closed")
        yield Block(path, kind, command, flags, opening + 1, closing, lines[opening + 1 : closing])


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [block for path in markdown_files(root) for block in blocks_in(path)]


# Normalising what moves from run to run. Order matters: durations before bare decimals.
_VOLATILE = [
    (re.compile(r"postgresql://\S+?(?=[\s,'\"]|$)"), "<server>"),
    (re.compile(r"embedded Postgres"), "<server>"),
    (re.compile(r"\b\d+(?:[.,]\d+)*\s?(?:ms|us|µs|s)\b"), "<time>"),
    (re.compile(r"\b\d+(?:[.,]\d+)*\s?(?:[a-z ]+)?/s\b"), "<rate>"),
    (re.compile(r"\b\d+\.\d+\b"), "<n>"),
    (re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]):\d+"), "<host>:<port>"),
    (re.compile(r"\b(pid|process) \d+"), r"\1 <pid>"),
    (re.compile(r"_\d{3,}\b"), "_<pid>"),
    (re.compile(r"(?:/tmp|/var/folders)/\S+"), "<tmp>"),
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\bjob [0-9a-f]{8}\b"), "job <uuid>"),
    (re.compile(r"\b\d{8}T\d{6}(?:-\d+)?\b"), "<timestamp>"),
    (re.compile(r"[ \t]+$"), ""),
]


def normalise(lines: Iterable[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        for pattern, replacement in _VOLATILE:
            line = pattern.sub(replacement, line)
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def finding_headlines(lines: Iterable[str]) -> list[str]:
    """The findings' first lines without what another shrink may change."""
    found = set()
    for line in lines:
        match = re.match(r"^\s*\d+\. (\[\w+\].*)$", line)
        if match is None:
            continue
        headline = match.group(1).split(": expected")[0]
        headline = re.sub(r"\bw\d+(~\d+)?\b", "w?", headline)
        found.add(re.sub(r"\(job \d+\)", "(job ?)", headline))
    return sorted(found)


def same(block: Block, shown: list[str], fresh: list[str]) -> bool:
    """Whether a fresh run's output still says what the block shows."""
    if "findings" in block.flags:
        # A search bounded by time may miss a cause another run found: every cause the
        # fresh run reports must be shown, and it must report one.
        found = finding_headlines(fresh)
        return bool(found) and set(found) <= set(finding_headlines(shown))
    return normalise(shown) == normalise(fresh)


def comparable(block: Block, lines: list[str]) -> list[str]:
    if "findings" in block.flags:
        return finding_headlines(lines)
    return normalise(lines)


@dataclass
class Run:
    output: list[str]
    status: int
    seconds: float
    stderr: str


def run_command(block: Block, database_url: str | None) -> Run:
    environment = dict(os.environ)
    environment.pop("DATABASE_URL", None)
    if database_url:
        environment["DATABASE_URL"] = database_url
    environment.update(COLUMNS="88", TERM="dumb", NO_COLOR="1", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    # A fresh Hypothesis example database for each command: examples saved by earlier
    # runs (the test suite's, a developer's) would be replayed first and change what a
    # seeded command prints.
    with tempfile.TemporaryDirectory(prefix="pm-samples-") as examples:
        environment["HYPOTHESIS_STORAGE_DIRECTORY"] = examples
        done = subprocess.run(
            ["bash", "-c", block.command],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if "stderr" in block.flags else subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    seconds = time.perf_counter() - started
    output = [line.rstrip() for line in done.stdout.splitlines()]
    if "stderr" in block.flags:
        output = [line for line in output if not PROGRESS.match(line)]
    while output and not output[-1]:
        output.pop()
    return Run(output, done.returncode, seconds, done.stderr or "")


def rendered(block: Block, run: Run) -> list[str]:
    return [f"$ {block.command}", *run.output]


def process(
    blocks: list[Block], *, check: bool, slow: bool, force: bool, database_url: str | None
) -> int:
    runs: dict[str, Run] = {}
    failed = 0
    changed: dict[Path, list[Block]] = {}
    for block in blocks:
        if block.kind != "sample":
            continue
        if block.slow and not slow:
            print(f"skip (slow)  {block.where}  {block.command}")
            continue
        if block.command not in runs:
            runs[block.command] = run_command(block, database_url)
        run = runs[block.command]
        new = rendered(block, run)
        problem = None
        if run.status != block.expected_exit:
            problem = f"exit status {run.status}, expected {block.expected_exit}"
        elif not same(block, block.body, new):
            problem = "differs from a fresh run"
        figure = f"{run.seconds:.1f} s"
        if problem is None and not force:
            print(f"same ({figure})  {block.where}  {block.command}")
            continue
        if problem is not None and (check or problem.startswith("exit")):
            failed += 1
            print(f"FAIL ({figure})  {block.where}  {block.command}: {problem}")
            if problem == "differs from a fresh run":
                diff = difflib.unified_diff(
                    comparable(block, block.body),
                    comparable(block, new),
                    "shown",
                    "fresh run",
                    lineterm="",
                )
                print("\n".join(f"    {line}" for line in diff))
            elif run.stderr:
                print("\n".join(f"    {line}" for line in run.stderr.splitlines()[-20:]))
            continue
        if check:
            print(f"same ({figure})  {block.where}  {block.command}")
            continue
        block.body = new
        changed.setdefault(block.path, []).append(block)
        print(f"wrote ({figure})  {block.where}  {block.command}")
    for path, rewritten in changed.items():
        lines = path.read_text().splitlines()
        for block in sorted(rewritten, key=lambda b: b.start, reverse=True):
            lines[block.start : block.end] = block.body
        path.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Rewrite nothing; exit 1 on a diff.")
    parser.add_argument("--slow", action="store_true", help="Run the slow samples too.")
    parser.add_argument("--force", action="store_true", help="Rewrite even unchanged blocks.")
    parser.add_argument("--only", action="append", default=[], help="Commands containing this.")
    parser.add_argument("--list", action="store_true", help="List the markers and exit.")
    parser.add_argument(
        "--database-url", default=None, help="Run the commands on this server, not embedded."
    )
    options = parser.parse_args(argv)
    try:
        blocks = all_blocks()
    except SampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.only:
        blocks = [b for b in blocks if any(word in b.command for word in options.only)]
    if options.list:
        for block in blocks:
            flags = " ".join(f"{k}={v}" if v else k for k, v in block.flags.items())
            print(f"{block.kind:6}  {flags:20}  {block.where}  {block.command}")
        return 0
    started = time.perf_counter()
    status = process(
        blocks,
        check=options.check,
        slow=options.slow,
        force=options.force,
        database_url=options.database_url,
    )
    print(f"{'checked' if options.check else 'done'} in {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
