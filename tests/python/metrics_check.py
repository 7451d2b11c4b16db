"""Checks a scrape of `GET /metrics` with the Prometheus client's own parser: every family has its
HELP text and a type, and every metric a query of the Grafana dashboard names is exported.

    metrics_check.py SCRAPE.txt DASHBOARD.json
"""

import json
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

from e2e_checks import check, summary

scrape, dashboard = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
families = list(text_string_to_metric_families(scrape))
exported = {s.name for f in families for s in f.samples}


@check("every family has HELP and TYPE")
def _():
    ours = [f for f in families if f.name.startswith("armature_")]
    assert len(ours) >= 60, len(ours)
    bad = [f.name for f in ours if not f.documentation or f.type not in ("counter", "gauge", "histogram")]
    assert not bad, bad


def queries(panel):
    for p in panel.get("panels", []):
        yield from queries(p)
    for t in panel.get("targets", []):
        yield t["expr"]


@check("every metric the dashboard queries is exported")
def _():
    exprs = list(queries(dashboard))
    assert len(exprs) >= 20, len(exprs)
    names = {n for e in exprs for n in re.findall(r"armature_[a-z0-9_]+", e)}
    missing = sorted(names - exported)
    assert not missing, missing


summary()
