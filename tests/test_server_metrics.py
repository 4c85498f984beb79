"""GET /metrics: Prometheus text format (parsed by Prometheus' own client library), counters that move with
real requests, histograms of time to first token and tokens/s, gauges read live."""

from __future__ import annotations

import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime import load_model
from edge_runtime.server import OpenAIServer, ServerSettings

KEY = "metrics-key"


@pytest.fixture(scope="module")
def served(default_model_path):
    with load_model(default_model_path, n_ctx=512) as model, \
            OpenAIServer(model, ServerSettings(port=0, api_key=KEY, asr="off")) as server:
        server.start()
        yield server


def scrape(server) -> dict:
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, name: str, **labels) -> float:
    fam = families[name]
    names = (name, name + "_total")  # the parser names a counter's family without `_total`
    return sum(s.value for s in fam.samples if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_follow_real_requests(served):
    before = scrape(served)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    for _ in range(3):
        client.completions.create(model="m", prompt="January, February,", max_tokens=8, temperature=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt="x", max_tokens=0)
    after = scrape(served)
    assert value(after, "edge_runtime_requests", route="/v1/completions", status="200") \
        - value(before, "edge_runtime_requests", route="/v1/completions", status="200") == 3
    assert value(after, "edge_runtime_requests", route="/v1/completions", status="400") >= 1
    ttft = after["edge_runtime_time_to_first_token_seconds"]
    count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
    assert count >= 3 and ttft.type == "histogram"
    tps_sum = next(s.value for s in after["edge_runtime_generation_tokens_per_second"].samples if s.name.endswith("_sum"))
    assert tps_sum > 0
    assert value(after, "edge_runtime_generated_tokens") - value(before, "edge_runtime_generated_tokens") == 24
    assert value(after, "edge_runtime_kv_cells_used") > 0 and value(after, "edge_runtime_kv_cells_total") == 512
    assert value(after, "edge_runtime_busy_slots") == 0 and value(after, "edge_runtime_queue_depth") == 0
    assert value(after, "edge_runtime_process_resident_memory_bytes") > 100e6


def test_metrics_need_the_key(served):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served.url + "/metrics", timeout=30)
    assert err.value.code == 401
