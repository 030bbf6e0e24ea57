"""The ``pipeline-models`` command."""

from __future__ import annotations

import sys

import click

from pipeline_models import __version__
from pipeline_models.errors import PipelineModelsError
from pipeline_models.logs import configure_logging

_DATABASE_URL = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    show_envvar=True,
    help="Postgres to use; without it an embedded throwaway server is started and stopped.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pipeline-models")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
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
def check(database_url: str | None, profile: str, machine: str, max_examples: int | None) -> None:
    """Model-check the reference pipeline: state machines, invariants after every rule.

    Exits 0 when no invariant failed; otherwise prints the shrunk program and exits 1.
    """
    from pipeline_models.check import run_check
    from pipeline_models.database import Database

    try:
        with Database.from_environment(database_url) as database:
            report = run_check(
                database, machine=machine, profile=profile, max_examples=max_examples
            )
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.command()
@_DATABASE_URL
@click.option("-n", "--documents", default=20, show_default=True, type=click.IntRange(1))
@click.option("-w", "--workers", default=4, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, help="Seed of the sample corpus.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds before giving up.")
@click.option(
    "--processes",
    is_flag=True,
    help="Run the fakes, the API and the workers as separate processes on loopback.",
)
def demo(
    database_url: str | None,
    documents: int,
    workers: int,
    seed: int,
    timeout: float,
    processes: bool,
) -> None:
    """Run the reference pipeline on sample documents and verify every ending.

    Exits 0 only if every document ended as the model predicts: done with exactly the
    expected chunks and vectors, or dead-lettered with last_error for unusable input
    (with --processes, unusable input may instead be refused at upload).
    """
    from pipeline_models import demo as demo_module

    try:
        report = demo_module.main(
            database_url=database_url,
            documents=documents,
            workers=workers,
            seed=seed,
            timeout=timeout,
            processes=processes,
        )
    except (PipelineModelsError, TimeoutError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@main.command("serve-fakes")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--parser-port", default=8001, show_default=True, type=click.IntRange(0, 65535))
@click.option("--embeddings-port", default=8002, show_default=True, type=click.IntRange(0, 65535))
@click.option("--pending-polls", default=0, show_default=True, type=click.IntRange(0))
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
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(database_url: str | None, host: str, port: int) -> None:
    """Serve the upload API (settings from PIPELINE_* variables; see the README)."""
    from pipeline_models.pipeline.processes import run_api
    from pipeline_models.settings import Settings

    try:
        run_api(Settings.from_env(database_url=database_url), host=host, port=port)
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@_DATABASE_URL
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1), help="Jobs at once.")
@click.option("--name", default="worker", show_default=True, help="Prefix of the slots' names.")
@click.option(
    "--grace-seconds",
    default=30.0,
    show_default=True,
    help="After SIGTERM, how long running steps may take before their leases are released.",
)
def worker(database_url: str | None, slots: int, name: str, grace_seconds: float) -> None:
    """Run a worker with N job slots until SIGTERM, then finish or release and exit 0."""
    from pipeline_models.pipeline.processes import run_worker
    from pipeline_models.settings import Settings

    try:
        run_worker(
            Settings.from_env(database_url=database_url),
            slots=slots,
            name=name,
            grace_seconds=grace_seconds,
        )
    except PipelineModelsError as error:
        raise click.ClickException(str(error)) from None


__all__ = ["main"]


if __name__ == "__main__":
    main()
