"""The README and the docs site: short, linked, and showing what the commands print.

Every sample output block is marked with the command that prints it
(``scripts/samples.py``); here every marker must name a real command with options that
exist, and the quick samples must match a fresh run (.ci/run checks the slow ones too:
``python scripts/samples.py --check --slow``). The README stays a five-minute read, and
every relative link resolves.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest

from pipeline_models.cli import main

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("samples", ROOT / "scripts" / "samples.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["samples"] = module
    spec.loader.exec_module(module)
    return module


samples = _samples()
BLOCKS = samples.all_blocks(ROOT)


def test_the_readme_is_a_five_minute_read() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move the detail to docs/"


def _links(path: Path) -> list[str]:
    text = path.read_text()
    text = re.sub(r"^(```+|~~~+).*?^\1\s*$", "", text, flags=re.S | re.M)  # not in code
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def _anchors(path: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub and MkDocs make them."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", path.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):
            continue  # a URL
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        # Anchors in the docs are MkDocs's to check (strict, with the generated reference's
        # anchors); the README's are checked here, as GitHub makes them.
        check_anchor = anchor and path == README and resolved.suffix == ".md"
        if not resolved.exists() or (check_anchor and anchor not in _anchors(resolved)):
            broken.append(link)
    assert not broken, f"{path.relative_to(ROOT)}: links that resolve to nothing: {broken}"


def test_the_readme_links_to_the_docs_and_says_how_to_build_them() -> None:
    text = README.read_text()
    for page in ("docs/tutorial.md", "docs/own-worker.md", "docs/reference/cli.md"):
        assert f"({page}" in text, page
    assert "mkdocs serve" in text
    assert "mkdocs build --strict" in text


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"


def test_samples_are_marked_and_the_readme_has_its_own() -> None:
    kinds = {(block.path.name, block.kind) for block in BLOCKS}
    assert ("README.md", "sample") in kinds
    assert len([b for b in BLOCKS if b.kind == "sample"]) >= 5


def _command_of(words: list[str]) -> tuple[click.Command, list[str]] | None:
    """The pipeline-models command a marker runs, and its arguments; None for others."""
    if not words or words[0] != "pipeline-models":
        return None
    command: click.Command = main
    rest = words[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name, rest = rest[0], rest[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"no command {name!r}"
        command = found
    return command, rest


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.where} {b.command}")
def test_every_marked_command_exists_with_its_options(block: samples.Block) -> None:
    words = shlex.split(block.command.split("|")[0])
    found = _command_of(words)
    if found is None:
        assert words[:3] == ["python", "-m", "pytest"], block.command
        return
    command, arguments = found
    options = {name for param in command.params for name in getattr(param, "opts", [])}
    options |= {"-h", "--help"}
    for word in arguments:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"{block.where}: {word} is not an option"
    # The block shows the command it ran.
    if block.body and block.body[0].startswith("$ "):
        assert block.body[0].startswith(f"$ {block.command}") or block.kind == "record"


def test_a_block_that_differs_from_a_fresh_run_is_caught() -> None:
    shown = ["$ x", "10 examples in 3.4 s: 141 steps/s", "transitions covered: 13 of 13"]
    fresh = ["$ x", "10 examples in 4.1 s: 120 steps/s", "transitions covered: 12 of 13"]
    assert samples.normalise(shown[:2]) == samples.normalise(fresh[:2])
    assert samples.normalise(shown) != samples.normalise(fresh)
    findings = samples.finding_headlines(
        ["1. [fencing] w1 wrote a job (job 1): expected x", "2. [attempts] y (job 2)"]
    )
    assert findings == ["[attempts] y (job ?)", "[fencing] w? wrote a job (job ?)"]


def test_a_stderr_sample_leaves_out_the_progress_lines_and_nothing_else() -> None:
    from pipeline_models.progress import Reading, render

    progress = [
        render("check", Reading(23, 1530, (13, 13)), 10.2, rate=153.0),
        render("check", Reading(0, 0, (0, 13)), 0.4, rate=0.0) + "; ended by an error",
        render("mutants", Reading(detail="control 1 of 2 done"), 75) + "; stopped by Ctrl-C",
        render("repro", Reading(3, detail="failure 1 of 1, 1 file written"), 4) + "; done",
    ]
    assert all(samples.PROGRESS.match(line) for line in progress)
    report = [
        "pipeline-models check: pipeline machine, profile dev, seed 3, embedded Postgres",
        "10 examples, 600 rules, 477 worker steps in 3.7 s: 129 steps/s, 162 rules/s",
        "Error: nothing accepts connections at 'postgresql://u:***@127.0.0.1:1/x'",
        "OK: no invariant failed",
    ]
    assert not any(samples.PROGRESS.match(line) for line in report)


QUICK = [b for b in BLOCKS if b.kind == "sample" and not b.slow]


def _check(blocks: list[samples.Block]) -> None:
    status = samples.process(blocks, check=True, slow=True, force=False, database_url=None)
    assert status == 0, "a sample differs from a fresh run: python scripts/samples.py"


def test_the_quick_samples_are_what_their_commands_print(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capsys.disabled():
        print()
        _check(QUICK)


def test_the_readmes_spec_is_a_spec_and_its_line_counts_are_the_guides() -> None:
    import tomllib

    from pipeline_models.core import Spec
    from pipeline_models.examples.guide import adapter

    text = README.read_text()
    toml = re.search(r"```toml\n(.*?)```", text, re.S)
    assert toml is not None
    assert Spec.from_mapping(tomllib.loads(toml.group(1))).table == "myapp.jobs"
    folder = Path(adapter.__file__).parent
    spec_lines = len((folder / "spec.toml").read_text().splitlines())
    adapter_lines = len((folder / "adapter.py").read_text().splitlines())
    said = re.search(r"(\d+)-line spec and a\s+(\d+)-line adapter", text)
    assert said is not None
    assert (int(said.group(1)), int(said.group(2))) == (spec_lines, adapter_lines)
