"""The ``pipeline-models`` command."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from pipeline_models import __version__
from pipeline_models.errors import PipelineModelsError
from pipeline_models.logs import configure_logging
from pipeline_models.pipeline.budget import BudgetState

if TYPE_CHECKING:  # the CLI stays cheap to import: asyncpg only when a command needs it
    from pipeline_models.pipeline.budget import BudgetState

_DATABASE_URL = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    show_envvar=True,
    help="Postgres to use; without it an embedded throwaway server is started and stopped.",
)

# The workers and the budget command meet the API in its database: an embedded server
# would be private to one process, so they refuse to start without a URL.
_SHARED_DATABASE_URL = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    show_envvar=True,
    help="The Postgres the API and the workers share (required: an embedded server would "
    "be private to this process).",
)


_CONFIG = click.option(
    "--config",
    "config_file",
    envvar="PIPELINE_CONFIG",
    default=None,
    show_envvar=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML config file: services, keys, rate limits, prices, budget (see the README).",
)


class _Money(click.ParamType):  # type: ignore[type-arg]  # generic only in click stubs
    name = "usd"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount in USD, such as 2.50", param, ctx)
        if not amount.is_finite() or amount < 0:
            self.fail(f"{value!r} must be 0 or more", param, ctx)
        return amount


class _CommaSeparatedChoice(click.ParamType):  # type: ignore[type-arg]  # as _Money
    """Some of ``choices``, written comma-separated ("checker,examples"); in the order
    given, each once."""

    name = "list"

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[" + "|".join(self.choices) + "],..."

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):  # already converted (a default given as a tuple)
            return value
        chosen = tuple(dict.fromkeys(part.strip() for part in str(value).split(",")))
        chosen = tuple(name for name in chosen if name)
        unknown = [name for name in chosen if name not in self.choices]
        if unknown or not chosen:
            what = f"no {', '.join(map(repr, unknown))}" if unknown else "none given"
            self.fail(
                f"{what}: choose from {', '.join(self.choices)} (comma-separated)", param, ctx
            )
        return chosen


# The sides of pipeline_models.mutants.child.SIDES, spelled out: importing the child
# imports the machines, and the CLI stays cheap to import.
_MUTANT_SIDES = ("checker", "coarse", "examples")

# Long commands show what they are doing on stderr (pipeline_models.progress).
_PROGRESS = click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="While it runs, show progress on stderr: a line redrawn in place on a terminal, "
    "a plain line every 10 s (PIPELINE_MODELS_PROGRESS_SECONDS) anywhere else.",
)

# Seconds as a float everywhere: a time limit need not be whole.
_SECONDS = click.FloatRange(min=0, min_open=True)


_MAX_COST = click.option(
    "--max-cost",
    "max_cost",
    type=_Money(),
    default=None,
    help="Cap the run's spending on external services (USD). Overrides PIPELINE_MAX_COST.",
)


def _stopped(what_was_done: str, *, err: bool = False) -> NoReturn:
    """Ctrl-C: say what the command did until then, and exit 130, not 1 (which says a
    failure was found; see pipeline_models.interrupts)."""
    from pipeline_models.interrupts import EXIT_CODE

    click.echo(what_was_done, err=err)
    sys.exit(EXIT_CODE)


class _Commands(click.Group):
    """The commands; a Ctrl-C that a command does not report on itself still ends it as
    interrupted (exit 130), not as click's 'Aborted!' (exit 1)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _stopped("STOPPED by Ctrl-C")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pipeline-models")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log records at this level and above, on stderr.",
)
@click.option("--log-json", is_flag=True, help="Logs as JSON lines on stderr.")
def main(log_level: str, log_json: bool) -> None:
    """Model-check Postgres-backed document pipelines with Hypothesis."""
    configure_logging(level=log_level, json_lines=log_json)


@main.command()
@_DATABASE_URL
@click.option(
    "--profile",
    default="dev",
    show_default=True,
    type=click.Choice(["ci", "dev", "fuzz", "debug"]),
    help="Hypothesis settings profile.",
)
@click.option(
    "--machine",
    default="pipeline",
    show_default=True,
    type=click.Choice(["pipeline", "queue"]),
    help="The document pipeline machine, or the job-queue layer alone.",
)
@click.option("--max-examples", type=click.IntRange(1), default=None, help="Override the profile.")
@click.option(
    "--adapter",
    metavar="MODULE:NAME",
    default=None,
    help="Check your own worker through this adapter (a pipeline_models.core.Adapter).",
)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With --adapter: the spec as TOML (a file, or a pyproject with [tool.pipeline-models]).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Search from this seed (an integer): the same seed and options run the same "
    "examples again. Default: the profile's (ci: derandomized; others: random).",
)
@click.option(
    "--schema",
    default=None,
    help="The Postgres schema of the reference pipeline's tables, emptied before every "
    "example (default: upload_pipeline). Give each run on one server its own.",
)
@click.option(
    "--without",
    multiple=True,
    metavar="INVARIANT",
    help="With --adapter: leave out an invariant (repeatable).",
)
@click.option(
    "--coverage",
    "measure_coverage",
    is_flag=True,
    default=False,
    help="Measure (coverage.py, branch mode) which branches of the reference pipeline and "
    "which of its named SQL queries the run reached; print the share and the branches "
    "missed after the report. Needs the coverage extra.",
)
@_PROGRESS
def check(
    database_url: str | None,
    profile: str,
    machine: str,
    max_examples: int | None,
    adapter: str | None,
    spec_file: str | None,
    seed: int | None,
    schema: str | None,
    without: tuple[str, ...],
    measure_coverage: bool,
    progress: bool,
) -> None:
    """Model-check the reference pipeline, or (--adapter) your own worker.

    Exits 0 when no invariant failed; otherwise prints each distinct finding with its
    shrunk program and exits 1. Ctrl-C stops the search: it prints what the search did
    until then and exits 130.
    """
    if adapter is not None:
        if schema is not None:
            raise click.UsageError(
                "--schema is the reference pipeline's; your adapter's setup makes its own tables"
            )
        if measure_coverage:
            raise click.UsageError("--coverage measures the reference pipeline, not an adapter")
        _check_own_worker(
            database_url, adapter, spec_file, profile, seed, max_examples, without, progress
        )
        return
    from pipeline_models.reach import CoverageUnavailable, Measure

    measure = None
    if measure_coverage:
        try:
            # Before the pipeline is imported: what its import runs is reached too.
            measure = Measure().start()
        except CoverageUnavailable as error:
            raise click.ClickException(str(error)) from None
    from pipeline_models.check import MACHINES, run_check
    from pipeline_models.database import Database
    from pipeline_models.interrupts import (
        Interrupted,
        deferred_ctrl_c,
        search_so_far,
        without_seed_advice,
    )
    from pipeline_models.progress import Progress, check_reading, choose_mode
    from pipeline_models.schema import DEFAULT_SCHEMA

    try:
        with (
            deferred_ctrl_c(),
            without_seed_advice(),
            Progress("check", check_reading(MACHINES[machine]), mode=choose_mode(progress)),
            Database.from_environment(database_url, schema=schema or DEFAULT_SCHEMA) as database,
        ):
            report = run_check(
                database,
                machine=machine,
                profile=profile,
                max_examples=max_examples,
                seed=seed,
                measure=measure,
            )
    except Interrupted as stop:  # the embedded server, if any, is stopped by now
        _stopped(stop.report.render())
    except KeyboardInterrupt:
        _stopped(search_so_far(0, 0, again="check again"))
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


def _check_own_worker(
    database_url: str | None,
    adapter: str,
    spec_file: str | None,
    profile: str,
    seed: int | None,
    max_examples: int | None,
    without: tuple[str, ...],
    progress: bool,
) -> None:
    from pipeline_models.core import machine_for, use_server
    from pipeline_models.core.machines import STATISTICS
    from pipeline_models.core.report import load_adapter, run
    from pipeline_models.interrupts import deferred_ctrl_c, search_so_far, without_seed_advice
    from pipeline_models.progress import Progress, adapter_reading, choose_mode

    try:
        system = load_adapter(adapter, spec=spec_file)
        machine = machine_for(system, without=without)
    except (PipelineModelsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    use_server(database_url)
    examples, failures = STATISTICS.examples, STATISTICS.failures
    try:
        with (
            deferred_ctrl_c(),
            without_seed_advice(),
            Progress("check", adapter_reading(), mode=choose_mode(progress)),
        ):
            report = run(machine, profile=profile, seed=seed, max_examples=max_examples)
    except KeyboardInterrupt:  # the server, if embedded, is stopped at exit
        again = "check again" if seed is None else f"check --seed {seed} again"
        searched = STATISTICS.examples - examples
        _stopped(search_so_far(searched, STATISTICS.failures - failures, again=again))
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.command()
@_DATABASE_URL
@click.option(
    "--only", multiple=True, metavar="NAME", help="Run these mutants (repeatable; default all)."
)
@click.option(
    "--sides",
    default=",".join(_MUTANT_SIDES),
    show_default=True,
    type=_CommaSeparatedChoice(_MUTANT_SIDES),
    help="What runs against each mutant, comma-separated: checker, coarse (whole steps), examples.",
)
@click.option(
    "-j",
    "--jobs",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Child processes at once (each checks one mutant, or one part of the control).",
)
@click.option(
    "--max-examples",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="Examples per round of the search.",
)
@click.option(
    "--rounds",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Rounds per mutant before it counts as survived: the derandomized ci run, then "
    "one more seed each.",
)
@click.option(
    "--shrink-seconds",
    default=30.0,
    show_default=True,
    type=_SECONDS,
    help="Time allowed to shrink a kill.",
)
@click.option(
    "--catalog/--no-catalog",
    default=True,
    show_default=True,
    help="Run the mutants (--no-catalog: only the control, the unmodified package).",
)
@click.option(
    "--layer",
    type=click.Choice(["catalog", "core"]),
    default="catalog",
    show_default=True,
    help="The checker: catalog, each mutant on the machine the catalog names (queue or "
    "pipeline); core, every mutant and the control checked by the schema-free core through "
    "the reference's adapter (pipeline_models.pipeline.adapter), with the checker side only.",
)
@click.option(
    "--system",
    type=click.Choice(["reference", "reference-holdout", "procrastinate"]),
    default="reference",
    show_default=True,
    help="Whose bugs: the reference pipeline's catalog; its holdout (bugs the checker was "
    "never tuned against, pipeline_models.mutants.holdout); or procrastinate's (bugs planted "
    "in a scratch copy of the installed procrastinate, checked by the core through "
    "pipeline_models.examples.procrastinate.adapter; implies --layer core, --sides checker).",
)
@click.option(
    "--generated",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Instead of the catalog, N mechanical mutants of the reference pipeline "
    "(cosmic-ray's operators on pipeline/*.py, and SQL operators on the named queries; "
    "pipeline_models.mutants.generated), sampled by --sample-seed; each run like a "
    "catalog mutant on the pipeline layer, and scored killed / non-equivalent.",
)
@click.option(
    "--sample-seed",
    type=int,
    default=0,
    show_default=True,
    help="With --generated: the seed of the sample (printed with the results).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_PROGRESS
def mutants(
    database_url: str | None,
    only: tuple[str, ...],
    sides: tuple[str, ...],
    jobs: int,
    max_examples: int,
    rounds: int,
    shrink_seconds: float,
    catalog: bool,
    layer: str,
    system: str,
    generated: int | None,
    sample_seed: int,
    as_json: bool,
    progress: bool,
) -> None:
    """Prove the checker bites: run it, and two baselines, against a catalog of bugs.

    Each mutant is one realistic bug planted in a scratch copy of the reference pipeline.
    First the control: the unmodified package, copied and run the same way on the same
    schedule (every round). A kill counts only in a round the control passed, so if the
    control fails anywhere nothing is counted and the run fails. Exits 1 then, or if
    any mutant survives the checker. Ctrl-C stops the run, counting nothing (exit 130).
    """
    from pipeline_models.database import Database
    from pipeline_models.mutants.catalog import BY_NAME, CATALOG
    from pipeline_models.mutants.runner import (
        MutantReport,
        RunOptions,
        campaign_layers,
        control_tasks,
        format_control,
        format_report,
        run_campaign,
        to_json,
    )
    from pipeline_models.progress import MutantsTally, Progress, choose_mode

    chosen_sides = list(sides)
    if generated is not None:
        if only or system != "reference" or layer != "catalog" or not catalog:
            raise click.BadParameter(
                "mechanical mutants are the reference's, on the pipeline layer: no --only, "
                "--system, --layer core or --no-catalog",
                param_hint="--generated",
            )
        _generated_mutants(
            database_url,
            generated,
            sample_seed,
            chosen_sides,
            jobs=jobs,
            max_examples=max_examples,
            rounds=rounds,
            shrink_seconds=shrink_seconds,
            as_json=as_json,
            progress=progress,
        )
        return
    control_system = None
    adapter = None
    if system == "reference-holdout":
        from pipeline_models.mutants import holdout

        BY_NAME, CATALOG = holdout.BY_NAME, holdout.HOLDOUT
    elif system == "procrastinate":
        from pipeline_models.examples.procrastinate import mutants as third_party

        BY_NAME = {mutant.name: mutant for mutant in third_party.CATALOG}
        CATALOG = third_party.CATALOG
        control_system, adapter = third_party.UNMODIFIED, third_party.ADAPTER
        layer, chosen_sides = "core", ["checker"]
    unknown = [name for name in only if name not in BY_NAME]
    if unknown:
        raise click.BadParameter(
            f"no mutant {', '.join(unknown)}; the catalog: {', '.join(BY_NAME)}"
        )
    chosen = ([BY_NAME[name] for name in only] if only else list(CATALOG)) if catalog else []
    if layer == "core" and chosen_sides != ["checker"]:
        raise click.BadParameter(
            "the core checks through the adapter only: use --sides checker",
            param_hint="--layer core",
        )
    layers = ["core"] if layer == "core" else campaign_layers(chosen)

    tally = MutantsTally(len(control_tasks(layers, chosen_sides, rounds)), len(chosen))
    shown = Progress("mutants", tally.reading, mode=choose_mode(progress))

    def say(text: str) -> None:
        if not as_json:
            shown.echo(text)  # on stderr, above the progress line on a terminal

    finished: list[MutantReport] = []

    def controlled(report: MutantReport) -> None:
        tally.finished(report, control=True)

    def result(report: MutantReport) -> None:
        finished.append(report)
        tally.finished(report, control=False)
        if report.killed_by("checker"):
            verdict = "killed"
        else:  # a child that failed (Ctrl-C reaches them too) did not run
            verdict = "did not run" if report.error else "survived"
        say(f"  {report.name}: {verdict}")

    try:
        with Database.from_environment(database_url) as database:
            options = RunOptions(
                database.url,
                sides=chosen_sides,
                max_examples=max_examples,
                rounds=rounds,
                shrink_seconds=shrink_seconds,
                layer="core" if layer == "core" else None,
                adapter=adapter,
            )
            say(
                f"pipeline-models mutants: {len(chosen)} mutants x {', '.join(chosen_sides)}, "
                f"{jobs} processes, {database.display_url}"
            )
            say("  first the control: the unmodified package, every round")
            with shown:
                campaign = run_campaign(
                    chosen,
                    options,
                    jobs=jobs,
                    on_result=result,
                    on_control=controlled,
                    **({"control_system": control_system} if control_system else {}),
                )
    except KeyboardInterrupt:
        _stopped(
            f"STOPPED by Ctrl-C after {len(finished)} of {len(chosen)} mutants (the control "
            "runs first): nothing is counted",
            err=as_json,
        )
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None
    reports = campaign.mutants
    if as_json:
        click.echo(to_json(reports, chosen_sides, control=campaign.control, options=options))
    else:
        click.echo(format_control(campaign.control, options))
        if campaign.failures:
            click.echo("\nTHE UNMODIFIED PACKAGE FAILED ITS OWN SCHEDULE: no kill is counted.")
            for failure in campaign.failures:
                click.echo(f"  {failure}")
            click.echo(
                "Each is a false alarm of the checker or a bug of the reference pipeline: "
                "explain and fix it before counting kills."
            )
        if reports:
            click.echo("")
            click.echo(format_report(reports, chosen_sides))
    survived = "checker" in chosen_sides and any(
        not report.killed_by("checker") for report in reports
    )
    failed = any(report.error for report in reports)
    sys.exit(1 if campaign.failures or survived or failed else 0)


def _generated_mutants(
    database_url: str | None,
    n: int,
    seed: int,
    sides: list[str],
    *,
    jobs: int,
    max_examples: int,
    rounds: int,
    shrink_seconds: float,
    as_json: bool,
    progress: bool,
) -> None:
    """``mutants --generated N``: sample, set aside what does not compile or import,
    run the rest beside the control, score. Exits 1 if the control failed anywhere or a
    child did not run, as the catalog's run does, or if any mutant survives the checker."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline_models.database import Database
    from pipeline_models.mutants import generated as mechanical
    from pipeline_models.mutants.runner import (
        MutantReport,
        RunOptions,
        format_control,
        run_campaign,
    )
    from pipeline_models.progress import MutantsTally, Progress, choose_mode

    def say(text: str) -> None:
        click.echo(text, err=True)

    pool = mechanical.enumerate_pool()
    chosen = mechanical.sample(pool, n, seed=seed)
    say(
        f"pipeline-models mutants --generated {n} --sample-seed {seed}: {len(chosen)} of "
        f"{len(pool.eligible)} eligible mechanical mutants ({len(pool.candidates)} made, "
        f"{len(pool.equivalent)} equivalent by rule)"
    )
    rows = []
    planted = {}
    for candidate in chosen:
        why = mechanical.compiles(candidate, pool)
        rows.append(mechanical.row(candidate, pool, "does not compile" if why else "ran", why))
        if why is None:
            planted[candidate.id] = mechanical.to_mutant(candidate, pool)
    with ThreadPoolExecutor(max_workers=jobs) as threads:
        errors = dict(
            zip(planted, threads.map(mechanical.import_error, planted.values()), strict=True)
        )
    for generated_row in rows:
        if errors.get(generated_row.id):
            generated_row.status, generated_row.why = "does not import", errors[generated_row.id]
            del planted[generated_row.id]
    say(f"  {len(planted)} import; first the control: the unmodified package, every round")
    tally = MutantsTally(len(sides), len(planted))
    shown = Progress("mutants", tally.reading, mode=choose_mode(progress))

    def result(report: MutantReport) -> None:
        # On stderr even with --json: a long run's log says how far it got.
        tally.finished(report, control=False)
        verdicts = []
        for side in sides:
            outcome = report.sides.get(side)
            verdict = "killed" if outcome and outcome.killed else "survived"
            fired = f" [{', '.join(outcome.fired)}]" if outcome and outcome.killed else ""
            verdicts.append(f"{side} {verdict}{fired}")
        shown.echo(f"  {report.name}: {report.error or '; '.join(verdicts)}")

    try:
        with Database.from_environment(database_url) as database:
            options = RunOptions(
                database.url,
                sides=sides,
                max_examples=max_examples,
                rounds=rounds,
                shrink_seconds=shrink_seconds,
            )
            with shown:
                campaign = run_campaign(
                    list(planted.values()),
                    options,
                    jobs=jobs,
                    on_result=result,
                    on_control=lambda report: tally.finished(report, control=True),
                )
    except KeyboardInterrupt:
        _stopped("STOPPED by Ctrl-C: nothing is counted", err=as_json)
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None
    reports = {report.name: report for report in campaign.mutants}
    for generated_row in rows:
        if generated_row.id in reports:
            mechanical.settle(generated_row, reports[generated_row.id])
    if as_json:
        click.echo(
            mechanical.generated_json(
                rows, sides, pool, seed=seed, control=campaign.control, options=options
            )
        )
    else:
        click.echo(format_control(campaign.control, options))
        if campaign.failures:
            click.echo("\nTHE UNMODIFIED PACKAGE FAILED ITS OWN SCHEDULE: no kill is counted.")
            for failure in campaign.failures:
                click.echo(f"  {failure}")
        else:
            click.echo("")
            click.echo(mechanical.format_generated(rows, sides, pool, seed=seed))
    survived = "checker" in sides and any(
        r.status == "ran" and not r.killed_by("checker") for r in rows
    )
    failed = any(r.status == "did not run" for r in rows)
    sys.exit(1 if campaign.failures or survived or failed else 0)


_EXAMPLE_DATABASE = click.option(
    "--database",
    "example_database",
    envvar="PIPELINE_MODELS_EXAMPLE_DATABASE",
    show_envvar=True,
    default=None,
    metavar="DIR|redis://...",
    help="The Hypothesis example database (default: .hypothesis/examples).",
)


@main.command()
@_DATABASE_URL
@_EXAMPLE_DATABASE
@click.option(
    "--minutes",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="The session's time budget; it ends sooner at the first failure (see --keep-going).",
)
@click.option(
    "-n",
    "--processes",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="HypoFuzz worker processes, each with its own Postgres (or schema).",
)
@click.option(
    "--machine",
    "machine_names",
    multiple=True,
    type=click.Choice(["pipeline", "queue"]),
    help="Fuzz these machines (repeatable; default both).",
)
@click.option("--mutant", default=None, metavar="NAME", help="Plant this bug from the catalog.")
@click.option(
    "--repro-dir",
    default="tests/regressions",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the repro files of failures go.",
)
@click.option("--keep-going", is_flag=True, help="Fuzz for the whole budget even after a failure.")
@_PROGRESS
def fuzz(
    database_url: str | None,
    example_database: str | None,
    minutes: float,
    processes: int,
    machine_names: tuple[str, ...],
    mutant: str | None,
    repro_dir: Path,
    keep_going: bool,
    progress: bool,
) -> None:
    """A long fuzz session over the state machines, on HypoFuzz, with the fuzz profile.

    Prints a progress line, then a summary; failures are saved in the example database
    and written as repro files. Exits 1 when the session found a failure. Ctrl-C ends
    the session: the summary says what it did until then, and it exits 130.
    """
    from pipeline_models.fuzz import MACHINE_NAMES, FuzzOptions, FuzzReport, run_fuzz
    from pipeline_models.interrupts import Interrupted
    from pipeline_models.progress import Progress, Reading, choose_mode, fuzz_reading

    options = FuzzOptions(
        minutes=minutes,
        processes=processes,
        machines=machine_names or MACHINE_NAMES,
        example_database=example_database,
        database_url=database_url,
        mutant=mutant,
        repro_directory=repro_dir,
        stop_at_first_failure=not keep_going,
    )
    latest: list[FuzzReport] = []  # the session's last reading of its workers

    def read() -> Reading:
        return fuzz_reading(latest[-1] if latest else None)

    try:
        with Progress("fuzz", read, mode=choose_mode(progress)):
            report = run_fuzz(options, on_progress=latest.append)
    except Interrupted as stop:
        _stopped(stop.report.render())
    except (RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.command()
@_EXAMPLE_DATABASE
@click.option(
    "--out",
    default="tests/regressions",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the test files go.",
)
@click.option(
    "--machine",
    "machine_names",
    multiple=True,
    type=click.Choice(["pipeline", "queue"]),
    help="Only these machines' failures (repeatable; default both).",
)
@click.option("--label", default="fuzz", show_default=True, help="A word for the file names.")
@click.option(
    "--shrink-seconds",
    default=60.0,
    show_default=True,
    type=_SECONDS,
    help="Time allowed to shrink each failure.",
)
@click.option(
    "--run",
    "run_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instead: replay this repro file with the debug profile, printing every step.",
)
@_DATABASE_URL
@_PROGRESS
def repro(
    example_database: str | None,
    out: Path,
    machine_names: tuple[str, ...],
    label: str,
    shrink_seconds: float,
    run_file: Path | None,
    database_url: str | None,
    progress: bool,
) -> None:
    """Turn each failure in the example database into a standalone pytest file.

    With --run FILE, replay that file instead, printing every rule, each worker step and
    the job rows it changed; exits 1 if it fails.
    """
    from pipeline_models import machines
    from pipeline_models.database import Database
    from pipeline_models.examples_database import example_database as open_database
    from pipeline_models.interrupts import deferred_ctrl_c, without_seed_advice
    from pipeline_models.progress import Progress, ReproTally, choose_mode
    from pipeline_models.repro import MACHINES, run_repro_file, write_repro_files

    written: list[Path] = []
    tally = ReproTally()
    shown = Progress("repro", tally.reading, mode=choose_mode(progress))

    def wrote(path: Path) -> None:
        written.append(path)
        tally.written += 1
        shown.echo(f"wrote {path}", err=False)  # on stdout, above the progress line

    def replaying(number: int, failures: int) -> None:
        tally.replaying, tally.failures = number, failures

    try:
        with (
            deferred_ctrl_c(),
            without_seed_advice(),
            Database.from_environment(database_url) as database,
        ):
            import asyncio

            asyncio.run(database.ensure_schema())
            machines.use_database(database)
            if run_file is not None:
                failure = run_repro_file(run_file, echo=click.echo)
                sys.exit(1 if failure is not None else 0)
            # (A replay of one file prints every step: that is its progress.)
            with shown:
                write_repro_files(
                    open_database(example_database),
                    out,
                    machine_names=machine_names or tuple(MACHINES),
                    label=label,
                    shrink_seconds=shrink_seconds,
                    on_written=wrote,
                    on_replay=replaying,
                )
    except KeyboardInterrupt:
        if run_file is not None:
            _stopped(f"STOPPED by Ctrl-C: the replay of {run_file} did not finish")
        _stopped(f"STOPPED by Ctrl-C after writing {len(written)} repro files")
    if not written:
        click.echo("no failure in the example database reproduces here")


@main.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    default=".pipeline-models/report",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Writes OUT.svg and OUT.md.",
)
def report(runs: tuple[Path, ...], out: Path) -> None:
    """The lifecycle graph with how often each transition was seen, as SVG and Markdown.

    RUNS are transition files written by `pipeline-models fuzz` and by pytest (default:
    every .pipeline-models/transitions-*.json).
    """
    from pipeline_models.report import DEFAULT_DIRECTORY, load_counts, render_markdown, write_report

    paths = list(runs) or sorted(DEFAULT_DIRECTORY.glob("transitions-*.json"))
    if not paths:
        raise click.ClickException(
            "no transition files: run `pipeline-models fuzz` or `pytest tests/stateful` first"
        )
    svg, markdown = write_report(paths, out)
    click.echo(render_markdown(load_counts(paths)))
    click.echo(f"wrote {svg} and {markdown}")


@main.command()
@_DATABASE_URL
@click.option(
    "-n",
    "--documents",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Sample documents to upload (one of them large, a few unusable on purpose).",
)
@click.option(
    "-w",
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Workers taking jobs at once (with --processes: as slots of two worker processes).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the sample corpus.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds before giving up.")
@click.option(
    "--processes",
    is_flag=True,
    help="Run the fakes, the API and the workers as separate processes on loopback.",
)
@click.option(
    "--max-cost",
    type=_Money(),
    help="Cap the run (USD): run until only jobs held for the budget are left, then lift "
    "the cap and finish them. In process only.",
)
def demo(
    database_url: str | None,
    documents: int,
    workers: int,
    seed: int,
    timeout: float,
    processes: bool,
    max_cost: Decimal | None,
) -> None:
    """Run the reference pipeline on sample documents and verify every ending.

    Exits 0 only if every document ended as the model predicts: done with exactly the
    expected chunks and vectors, or dead-lettered with last_error for unusable input
    (with --processes, unusable input may instead be refused at upload), and, in
    process, the recorded cost is what the fake services billed. With --max-cost, the
    cap must also have held jobs, and none may have failed or been lost. Ctrl-C stops it
    unverified (exit 130).
    """
    from pipeline_models import demo as demo_module

    if max_cost is not None and processes:
        raise click.UsageError("--max-cost runs the in-process demo; drop --processes")
    try:
        report = demo_module.main(
            database_url=database_url,
            documents=documents,
            workers=workers,
            seed=seed,
            timeout=timeout,
            processes=processes,
            max_cost_usd=max_cost,
        )
    except KeyboardInterrupt:
        _stopped("STOPPED by Ctrl-C: the demo did not finish, so nothing was verified")
    except (PipelineModelsError, TimeoutError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.command("serve-fakes")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--parser-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The fake parser's port (0: any free port, announced on stdout).",
)
@click.option(
    "--embeddings-port",
    default=8002,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The fake embeddings API's port (0: any free port, announced on stdout).",
)
@click.option(
    "--pending-polls",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Polls of a parse job that answer 'pending' before its result is ready.",
)
@click.option("--api-key", default=None, help="Require this bearer token on both fakes.")
@click.option(
    "--webhook-secret",
    "webhook_secrets",
    multiple=True,
    help="Sign parser webhooks with this secret (repeat to sign with several).",
)
@click.option(
    "--auto-deliver-webhooks", is_flag=True, help="Send each webhook as soon as its job is done."
)
def serve_fakes(
    host: str,
    parser_port: int,
    embeddings_port: int,
    pending_polls: int,
    api_key: str | None,
    webhook_secrets: tuple[str, ...],
    auto_deliver_webhooks: bool,
) -> None:
    """Serve the fake parser and embeddings services on loopback until Ctrl-C or SIGTERM."""
    from pipeline_models.fakes.serve import run_fakes

    run_fakes(
        host=host,
        parser_port=parser_port,
        embeddings_port=embeddings_port,
        pending_polls=pending_polls,
        api_key=api_key,
        webhook_secrets=webhook_secrets,
        auto_deliver_webhooks=auto_deliver_webhooks,
    )


@main.command()
@_DATABASE_URL
@_CONFIG
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The port to listen on (0: any free port, announced on stdout).",
)
def serve(database_url: str | None, config_file: str | None, host: str, port: int) -> None:
    """Serve the upload API (settings from PIPELINE_* variables; see the README)."""
    from pipeline_models.pipeline.processes import run_api
    from pipeline_models.settings import Settings

    try:
        settings = Settings.from_env(config_file=config_file, database_url=database_url)
        run_api(settings, host=host, port=port)
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@_SHARED_DATABASE_URL
@_CONFIG
@_MAX_COST
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (0: any free port, announced on stdout).",
)
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1), help="Jobs at once.")
@click.option("--name", default="worker", show_default=True, help="Prefix of the slots' names.")
@click.option(
    "--grace-seconds",
    default=30.0,
    show_default=True,
    help="After SIGTERM, how long running steps may take before their leases are released.",
)
def worker(
    database_url: str | None,
    config_file: str | None,
    max_cost: Decimal | None,
    metrics_port: int | None,
    slots: int,
    name: str,
    grace_seconds: float,
) -> None:
    """Run a worker with N job slots until SIGTERM, then finish or release and exit 0.

    With a max cost, jobs the budget cannot cover wait in a 'budget' hold until
    'pipeline-models budget --max-cost' raises it.
    """
    from pipeline_models.pipeline.processes import run_worker
    from pipeline_models.settings import Settings

    try:
        run_worker(
            Settings.from_env(
                config_file=config_file, database_url=database_url, max_cost_usd=max_cost
            ),
            slots=slots,
            name=name,
            grace_seconds=grace_seconds,
            metrics_port=metrics_port,
        )
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@_SHARED_DATABASE_URL
@_CONFIG
@_MAX_COST
def budget(database_url: str | None, config_file: str | None, max_cost: Decimal | None) -> None:
    """Show the spending budget; with --max-cost, set it and release the held jobs."""
    import asyncio

    from pipeline_models.clock import SystemClock
    from pipeline_models.database import Database
    from pipeline_models.pipeline.budget import Budget
    from pipeline_models.settings import Settings

    settings = Settings.from_env(config_file=config_file, database_url=database_url)
    if not settings.database_url:
        raise click.ClickException("set DATABASE_URL (or --database-url): the workers' database")

    async def run() -> str:
        database = Database.from_environment(settings.database_url, schema=settings.schema)
        try:
            await database.ensure_schema()
            connection = await database.connect(application_name="pipeline-models budget")
            try:
                if max_cost is None:
                    state = await Budget().state(connection)
                    return "no budget: runs are not capped" if state is None else _money(state)
                state, released = await Budget().set_limit(
                    connection, max_cost, SystemClock().now()
                )
                return f"{_money(state)}\nreleased {released} held jobs"
            finally:
                await connection.close()
        finally:
            database.close()

    try:
        click.echo(asyncio.run(run()))
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None


def _money(state: BudgetState) -> str:
    values = state.as_dict()
    return ", ".join(f"{name.removesuffix('_usd')} ${value}" for name, value in values.items())


__all__ = ["main"]


if __name__ == "__main__":
    main()
