"""The worker's Prometheus endpoint, scraped while the demo runs."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline_models.database import Database
from pipeline_models.demo import run_demo
from pipeline_models.lifecycle import STAGES
from pipeline_models.metrics import PipelineMetrics, serve_metrics

pytestmark = pytest.mark.anyio

Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Scrape:
    """Samples by name, then by their sorted labels."""
    samples: Scrape = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def steps_by_stage(scrape: Scrape) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in scrape.get("pipeline_steps_total", {}).items():
        totals[dict(labels)["stage"]] += value
    return totals


async def test_the_metrics_endpoint_scraped_during_the_demo_shows_every_stage_moving(
    clean_pipeline_database: Database,
) -> None:
    metrics = PipelineMetrics()
    port = serve_metrics(metrics)
    scrapes: list[Scrape] = []
    stop = asyncio.Event()

    async def scrape_until_stopped() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while not stop.is_set():
                response = await client.get("/metrics")
                assert response.status_code == 200
                scrapes.append(parse(response.text))
                await asyncio.sleep(0.02)

    scraper = asyncio.create_task(scrape_until_stopped())
    report = await run_demo(
        clean_pipeline_database, documents=10, workers=3, large_bytes=64 * 1024, metrics=metrics
    )
    stop.set()
    await scraper
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        scrapes.append(parse((await client.get("/metrics")).text))
    assert report.ok, report.render()

    first, last = steps_by_stage(scrapes[0]), steps_by_stage(scrapes[-1])
    for stage in STAGES:
        # Every stage's step count moved from where it stood at the first scrape.
        assert last[stage.value] > first.get(stage.value, 0), stage
    # And moved during the run, not only at its end: the scrapes saw several totals.
    distinct = {tuple(sorted(steps_by_stage(s).items())) for s in scrapes}
    assert len(distinct) >= 3
    final = scrapes[-1]
    jobs = {dict(k)["state"]: v for k, v in final["pipeline_jobs"].items() if v}
    assert set(jobs) <= {"done", "deadletter"}
    assert sum(jobs.values()) == report.documents
    calls = {dict(k)["service"] for k in final["pipeline_external_calls_total"]}
    assert calls == {"parser", "embeddings"}
    assert final["pipeline_cost_usd"][()] == pytest.approx(float(report.cost_usd))
    assert report.cost_usd > 0
    circuits = final["pipeline_circuit_state"]
    assert circuits[(("service", "parser"), ("state", "closed"))] == 1
    assert final["pipeline_stage_duration_seconds_count"]


async def test_an_idle_pipeline_shows_no_steps() -> None:
    # The negative: nothing ran, so nothing moved (the counters are not prefilled).
    metrics = PipelineMetrics()
    assert steps_by_stage(parse(metrics.exposition().decode())) == {}
