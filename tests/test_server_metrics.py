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


def test_alerts_fire_log_and_export(default_model_path, tmp_path, caplog):
    import json
    import logging
    import time

    from edge_runtime.server.alerts import AlertRules
    from edge_runtime.server.keys import add_key, load_keys

    keys = tmp_path / "keys.json"
    one = add_key(keys, "one", rpm=1)
    rules = AlertRules(window_s=60, max_ttft_s=60.0, max_rss_mb=1.0, min_success=0.9)
    export = tmp_path / "metrics.json"
    caplog.set_level(logging.WARNING, logger="edge_runtime.server.alerts")
    with load_model(default_model_path, n_ctx=256) as model, \
            OpenAIServer(model, ServerSettings(port=0, keys=load_keys(keys), asr="off", alert_rules=rules,
                                               alert_interval_s=0.2, metrics_json=str(export))) as server:
        server.start()
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=one, max_retries=0, timeout=120)
        c.completions.create(model="m", prompt="Hi", max_tokens=4, temperature=0)
        with pytest.raises(openai.RateLimitError):  # a refused request counts against the success rate
            c.completions.create(model="m", prompt="Hi", max_tokens=4, temperature=0)
        req = urllib.request.Request(server.url + "/v1/alerts", headers={"Authorization": f"Bearer {one}"})
        alerts = {a["name"]: a for a in json.loads(urllib.request.urlopen(req, timeout=30).read())["alerts"]}
        assert alerts["success_rate"]["firing"] and alerts["success_rate"]["value"] == 0.5
        assert alerts["resident_memory_mb"]["firing"] and not alerts["ttft_p95_seconds"]["firing"]
        deadline = time.monotonic() + 10
        while not export.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        snapshot = json.loads(export.read_text())
    assert snapshot["metrics"]["generated_tokens"] == 4 and {a["name"] for a in snapshot["alerts"]} == set(alerts)
    assert any("alert firing: success_rate" in r.message for r in caplog.records)
