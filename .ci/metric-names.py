#!/usr/bin/env python3
"""Checks that the shipped Grafana dashboard and Prometheus alert rules name
only metrics a real scrape has.

Usage: metric-names.py SCRAPE DASHBOARD_JSON ALERTS_YML [PROMQL_RULES_OUT]

SCRAPE is a /metrics text taken after traffic (.ci/promtool makes one).
Every metric name in every PromQL expression of the dashboard (panel targets
and template variable queries) and of the rules file must be a sample name
of the scrape (`_bucket`/`_sum`/`_count` included as written there). Also
checks the dashboard's shape: schemaVersion >= 36 and every panel and
target on the `${DS_PROMETHEUS}` datasource input. With PROMQL_RULES_OUT,
writes the dashboard's expressions (Grafana variables replaced by values) as
a Prometheus rules file, so `promtool check rules` can parse them.

Standard library only (no YAML module): the rules file is read line by line
for its `expr:` values, and their count must match the rules'.
Exit status 1 on any finding, with one line per finding.
"""

import json
import re
import sys

KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on",
    "ignoring", "group_left", "group_right", "inf", "nan", "atan2",
}
# Label lists after these are label names, not metrics.
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
DS_INPUT = "${DS_PROMETHEUS}"


def sample_names(text):
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects."""
    # label_values(selector, label): the label is not a metric.
    e = re.sub(r"label_values\(\s*([^,]+?)\s*,\s*[A-Za-z_]\w*\s*\)", r"(\1)", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(GROUPING, " ", e)
    found = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        if tok.lower() in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue  # an operator or a function
        found.add(tok)
    return found


def grafana_exprs(dash, findings):
    """(where, expr) of every panel target and query variable; checks the
    datasource of each along the way."""
    out = []
    try:
        version = int(dash.get("schemaVersion", 0))
    except (TypeError, ValueError):
        version = 0
    if version < 36:
        findings.append(f"dashboard: schemaVersion {dash.get('schemaVersion')} < 36")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
               for i in dash.get("__inputs", [])):
        findings.append("dashboard: no __inputs entry DS_PROMETHEUS (prometheus)")

    def on_input(where, ds):
        if not isinstance(ds, dict) or ds.get("uid") != DS_INPUT:
            findings.append(f"{where}: datasource {ds!r} is not {DS_INPUT}")

    def walk(panels):
        for p in panels:
            where = f"panel {p.get('title')!r}"
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            on_input(where, p.get("datasource"))
            targets = p.get("targets", [])
            if not targets:
                findings.append(f"{where}: no targets")
            for t in targets:
                on_input(f"{where} target {t.get('refId')}", t.get("datasource", p.get("datasource")))
                if not t.get("expr"):
                    findings.append(f"{where} target {t.get('refId')}: no expr")
                else:
                    out.append((f"{where} {t.get('refId')}", t["expr"]))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            on_input(f"variable {v.get('name')}", v.get("datasource"))
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            out.append((f"variable {v.get('name')}", q))
    return out


def rule_exprs(text, findings):
    """(where, expr) of each rule's `expr:` (plain, quoted or block scalar)."""
    lines = text.splitlines()
    out = []
    name = None
    rules = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-\s+(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
            rules += 1
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", line)
        if not m:
            i += 1
            continue
        indent, value = len(m.group(1)), m.group(2)
        i += 1
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            value = " ".join(block)
        elif value[:1] in ("'", '"'):
            q = value[0]
            value = value[1:-1] if value.endswith(q) else value[1:]
            value = value.replace("''", "'") if q == "'" else value.replace('\\"', '"')
        out.append((f"rule {name}", value))
    if rules == 0 or len(out) != rules:
        findings.append(f"rules: {rules} rules but {len(out)} expr values read")
    return out


def grafana_to_promql(expr):
    """A dashboard expression with Grafana's variables given values, and a
    variable's label_values(selector, label) as its selector."""
    e = re.sub(r"^\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", r"\1", expr)
    e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    e = e.replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    scrape = sample_names(open(sys.argv[1]).read())
    findings = []
    if not scrape:
        findings.append("scrape: no samples")
    dash_exprs = grafana_exprs(json.load(open(sys.argv[2])), findings)
    exprs = dash_exprs + rule_exprs(open(sys.argv[3]).read(), findings)
    checked = set()
    for where, expr in exprs:
        names = metric_names(expr)
        if not names:
            findings.append(f"{where}: no metric name in {expr!r}")
        for n in sorted(names - scrape):
            findings.append(f"{where}: {n} is not in the scrape ({expr})")
        checked |= names
    if len(sys.argv) == 5:
        with open(sys.argv[4], "w") as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, (_, expr) in enumerate(dash_exprs):
                f.write(f"      - record: dashboard:expr{i}\n")
                f.write(f"        expr: {json.dumps(grafana_to_promql(expr))}\n")
    for f in findings:
        print(f"metric-names: {f}")
    if findings:
        sys.exit(1)
    print(f"metric-names: {len(exprs)} expressions, {len(checked)} metric names, all in the scrape")


if __name__ == "__main__":
    main()
