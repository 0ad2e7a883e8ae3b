#!/usr/bin/env bash
# Offline checks of deploy/monitoring/ (run by .ci/run; needs promtool from
# the Debian package `prometheus`, installed by tests/peers/install.sh, and
# Python with PyYAML: the CI venv target/ci-venv when .ci/run made it):
#   - costguard-rules.yaml: a PrometheusRule whose spec.groups pass
#     `promtool check rules`; every alert has a severity and summary,
#     description and runbook annotations; every recording rule is used;
#   - costguard-rules.test.yaml: `promtool test rules` passes, and every alert
#     has a case where it fires and one where it must not;
#   - costguard-dashboard.json: every panel and query on the ${datasource}
#     variable, the job and pod variables, every query valid PromQL (checked
#     by promtool as a rule), every recording rule it reads defined;
#   - costguard-podmonitor.yaml: selects the pods of deploy/kubernetes/ by
#     their labels and scrapes their `metrics` port.
# That every costguard_* metric named in the rules and the dashboard is one
# the binary exports is tests/monitoring.rs (cargo test).
set -euo pipefail
cd "$(dirname "$0")/../.."

py=python3
if [ -x target/ci-venv/bin/python ]; then
  py=target/ci-venv/bin/python
fi
if ! "$py" -c 'import yaml' 2>/dev/null; then
  echo "deploy/monitoring/check.sh: $py has no PyYAML (run .ci/run, which makes target/ci-venv)" >&2
  exit 1
fi
command -v promtool >/dev/null || {
  echo "deploy/monitoring/check.sh: promtool not found (bash tests/peers/install.sh)" >&2
  exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The structural checks; writes the plain rule file, a rule file made of the
# dashboard's queries, and the test file beside them (promtool resolves
# rule_files relative to the test file).
"$py" - "$work" <<'PY'
import json
import re
import sys
from pathlib import Path

import yaml

out = Path(sys.argv[1])
here = Path("deploy/monitoring")
problems = []


def problem(msg):
    problems.append(msg)


# --- the PrometheusRule -------------------------------------------------
rule_doc = yaml.safe_load((here / "costguard-rules.yaml").read_text())
if rule_doc.get("apiVersion") != "monitoring.coreos.com/v1" or rule_doc.get("kind") != "PrometheusRule":
    problem("costguard-rules.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
if not rule_doc.get("metadata", {}).get("name"):
    problem("costguard-rules.yaml: metadata.name missing")
if set(rule_doc.get("spec", {})) != {"groups"}:
    problem(f"costguard-rules.yaml: spec must hold groups only, has {sorted(rule_doc.get('spec', {}))}")
groups = rule_doc["spec"]["groups"]
(out / "costguard-rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))

alerts, records, exprs = {}, {}, []
for g in groups:
    for r in g["rules"]:
        exprs.append(r["expr"])
        if "alert" in r:
            name = r["alert"]
            if name in alerts:
                problem(f"alert {name} defined twice")
            alerts[name] = r
            sev = r.get("labels", {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                problem(f"alert {name}: severity {sev!r}, not critical, warning or info")
            ann = r.get("annotations", {})
            for key in ("summary", "description", "runbook"):
                if len(str(ann.get(key, "")).strip()) < 20:
                    problem(f"alert {name}: annotation {key} missing or too short")
        else:
            records[r["record"]] = r
RECORD = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def recordings_in(expr):
    return set(RECORD.findall(expr))


# --- the dashboard ------------------------------------------------------
dash = json.loads((here / "costguard-dashboard.json").read_text())
ds = {"type": "prometheus", "uid": "${datasource}"}
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
    problem("dashboard: no `datasource` variable of type datasource over prometheus")
for name in ("job", "pod"):
    v = variables.get(name)
    if not v or v.get("type") != "query" or v.get("datasource") != ds:
        problem(f"dashboard: no `{name}` query variable on ${{datasource}}")
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    problem("dashboard: schemaVersion below 36")
if not dash.get("uid"):
    problem("dashboard: no uid")
text = json.dumps(dash)
if re.search(r"https?://", text):
    problem("dashboard: refers to an external URL (no external assets)")


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


ids, queries, row_titles = set(), [], []
for p in walk(dash["panels"]):
    if p["id"] in ids:
        problem(f"dashboard: panel id {p['id']} twice")
    ids.add(p["id"])
    if "gridPos" not in p:
        problem(f"dashboard: panel {p.get('title')!r} has no gridPos")
    if p["type"] == "row":
        row_titles.append(p["title"])
        continue
    if p.get("datasource") != ds:
        problem(f"dashboard: panel {p.get('title')!r} not on ${{datasource}}")
    if not p.get("targets"):
        problem(f"dashboard: panel {p.get('title')!r} has no query")
    for t in p.get("targets", []):
        if t.get("datasource") != ds:
            problem(f"dashboard: a query of {p.get('title')!r} not on ${{datasource}}")
        queries.append((p["title"], t["refId"], t["expr"]))
for v in variables.values():
    if v.get("type") == "query":
        queries.append((f"variable {v['name']}", "q", v["query"]["query"]))
for want in ("Traffic", "Latency", "Upstream", "Limits", "Caches", "Policy", "Audit", "Single sign-on", "Shared mode"):
    if not any(t.startswith(want) for t in row_titles):
        problem(f"dashboard: no row {want!r}")

# The queries as recording rules, for promtool to parse: Grafana's
# variables replaced by values of their kind.
subst = [("$__rate_interval", "2m"), ("$__interval", "1m"), ("$__range", "1h"),
         ("$namespace", "x"), ("$job", "x"), ("$pod", "x")]
dash_rules = []
for i, (title, ref, expr) in enumerate(queries):
    e = expr
    m = re.fullmatch(r"label_values\((.*), *([a-z_]+)\)", e)
    if m:
        e = m.group(1)
    for a, b in subst:
        e = e.replace(a, b)
    if "$" in e:
        problem(f"dashboard: {title} {ref}: unknown variable in {expr}")
    dash_rules.append({"record": f"dashboard:query_{i}:check", "expr": e})
    for rec in recordings_in(expr):
        if rec not in records:
            problem(f"dashboard: {title} {ref}: recording rule {rec} is not in costguard-rules.yaml")
(out / "dashboard-queries.yaml").write_text(
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": dash_rules}]}, sort_keys=False))

# Every recording rule is read by an alert, another recording rule, or
# the dashboard.
used = set()
for e in exprs + [q[2] for q in queries]:
    used |= recordings_in(e)
for r in records:
    if r not in used:
        problem(f"recording rule {r} is used by no alert and no panel")

# --- the unit tests -----------------------------------------------------
tests = yaml.safe_load((here / "costguard-rules.test.yaml").read_text())
if tests.get("rule_files") != ["costguard-rules.yaml"]:
    problem("costguard-rules.test.yaml: rule_files must be [costguard-rules.yaml]")
if tests.get("group_eval_order") != [g["name"] for g in groups]:
    problem("costguard-rules.test.yaml: group_eval_order must list every group, in the file's order")
fires, quiet = set(), set()
for tc in tests["tests"]:
    for at in tc.get("alert_rule_test", []):
        if at.get("exp_alerts"):
            fires.add(at["alertname"])
        else:
            quiet.add(at["alertname"])
for name in alerts:
    if name not in fires:
        problem(f"costguard-rules.test.yaml: no case where {name} fires")
    if name not in quiet:
        problem(f"costguard-rules.test.yaml: no case where {name} must not fire")
for name in (fires | quiet) - set(alerts):
    problem(f"costguard-rules.test.yaml: tests unknown alert {name}")
(out / "costguard-rules.test.yaml").write_text((here / "costguard-rules.test.yaml").read_text())

# --- the PodMonitor against the manifests ------------------------------
pm = yaml.safe_load((here / "costguard-podmonitor.yaml").read_text())
if pm.get("apiVersion") != "monitoring.coreos.com/v1" or pm.get("kind") != "PodMonitor":
    problem("costguard-podmonitor.yaml: not a monitoring.coreos.com/v1 PodMonitor")
spec = pm["spec"]
label_key = spec.get("jobLabel")
selected = set()
for e in spec["selector"].get("matchExpressions", []):
    if e["key"] == label_key and e["operator"] == "In":
        selected |= set(e["values"])
ports = {e.get("port") for e in spec["podMetricsEndpoints"]}
pod_names = set()
for path in sorted(Path("deploy/kubernetes").glob("*.yaml")):
    for d in yaml.safe_load_all(path.read_text()):
        if not d or d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        tpl = d["spec"]["template"]
        name = tpl["metadata"]["labels"].get(label_key)
        pod_names.add(name)
        containers = tpl["spec"].get("containers", []) + tpl["spec"].get("initContainers", [])
        cg = [c for c in containers if c["name"] == "costguard"]
        if not cg or not any(p.get("name") in ports and p.get("containerPort") == 9100 for p in cg[0].get("ports", [])):
            problem(f"{path}: costguard container has no port {sorted(ports)} = 9100 the PodMonitor scrapes")
if selected != pod_names:
    problem(f"costguard-podmonitor.yaml: selects {sorted(selected)}, the manifests' pods are {sorted(pod_names)}")

for p in problems:
    print(f"FAIL {p}")
if problems:
    sys.exit(1)
print(f"ok  costguard-rules.yaml: {len(alerts)} alerts, {len(records)} recording rules, "
      f"each alert tested firing and quiet")
print(f"ok  costguard-dashboard.json: {len(queries)} queries in {len(ids)} panels and rows")
print(f"ok  costguard-podmonitor.yaml: selects {sorted(selected)} on port {sorted(ports)}")
PY

echo "--- promtool check rules (the PrometheusRule's groups)"
promtool check rules "$work/costguard-rules.yaml"
echo "--- promtool check rules (the dashboard's queries)"
promtool check rules "$work/dashboard-queries.yaml"
echo "--- promtool test rules deploy/monitoring/costguard-rules.test.yaml"
promtool test rules "$work/costguard-rules.test.yaml"
