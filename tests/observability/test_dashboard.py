"""``config/grafana-dashboard.json`` is valid JSON, and every metric its panels query is one the gateway
exposes (or the process collector's)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.observability.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"


def test_dashboard_loads_and_queries_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "room-gateway" and dashboard["panels"]
    families = {family.name for family in Metrics().registry.collect()}  # counters without "_total"
    exposed = families | {
        name + suffix for name in families for suffix in ("_total", "_bucket", "_count", "_sum")
    }
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:room_gateway|process)_[a-z_]+)", target["expr"]):
                assert name in exposed, (panel["title"], name)
