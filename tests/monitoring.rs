//! The alert rules and the dashboard of deploy/monitoring/ against the
//! metrics the real binary exports: every `costguard_*` name in a PromQL
//! expression (rules, dashboard panels and variables, the rule tests' input
//! series) is a series on the `/metrics` page of a sidecar that made
//! allowed, denied and local decisions, or one of the few that only the
//! shared mode or single sign-on exports, listed here with the reason and
//! found in the source with the right type; every label a selector or an
//! aggregation names is a label of those series; every label value a
//! selector matches is one the page shows or the source writes.
//! (`promtool check rules` / `test rules` on the same files:
//! deploy/monitoring/check.sh.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Sidecar, Upstream, get, get_as, send};

/// Labels every series gets from the scrape (deploy/monitoring/
/// costguard-podmonitor.yaml: the operator's `namespace`, `pod`, `instance`;
/// `job` from the pod's app.kubernetes.io/name).
const TARGET_LABELS: &[&str] = &["namespace", "job", "pod", "instance"];

/// Labels whose values come from the configuration or the build (route
/// templates, provider names, the policy's fingerprint, the version), not
/// from a fixed set: their values are not checked.
const OPEN_LABELS: &[&str] = &["route", "provider", "fingerprint", "version"];

/// The type of a metric, as the source declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Series the rules and the dashboard use that a sidecar with the embedded
/// store and no sign-on does not export: (name in PromQL, type, labels,
/// why). Each is looked up in src/ (the name as registered, its type, its
/// labels), so a misspelt name here or in a rule still fails.
const NOT_EXPORTED_HERE: &[(&str, Kind, &[&str], &str)] = &[
    (
        "costguard_rate_limit_redis_up",
        Kind::Gauge,
        &[],
        "shared mode: [rate_limit] backend = \"redis\"",
    ),
    (
        "costguard_rate_limit_redis_errors_total",
        Kind::Counter,
        &[],
        "shared mode: the Redis limiter",
    ),
    (
        "costguard_rate_limit_redis_round_trips_total",
        Kind::Counter,
        &[],
        "shared mode: the Redis limiter",
    ),
    (
        "costguard_rate_limit_local_refusals_total",
        Kind::Counter,
        &[],
        "shared mode: the Redis limiter",
    ),
    (
        "costguard_rate_limit_redis_replicas",
        Kind::Gauge,
        &[],
        "shared mode: the Redis limiter's heartbeat",
    ),
    (
        "costguard_rate_limit_fallback_total",
        Kind::Counter,
        &["mode"],
        "shared mode: requests decided without Redis",
    ),
    (
        "costguard_audit_shipped_total",
        Kind::Counter,
        &[],
        "shared mode: audit shipping to PostgreSQL",
    ),
    (
        "costguard_audit_ship_lag_records",
        Kind::Gauge,
        &[],
        "shared mode: audit shipping to PostgreSQL",
    ),
    (
        "costguard_audit_ship_errors_total",
        Kind::Counter,
        &[],
        "shared mode: audit shipping to PostgreSQL",
    ),
    (
        "costguard_audit_ship_up",
        Kind::Gauge,
        &[],
        "shared mode: audit shipping to PostgreSQL",
    ),
    (
        "costguard_invalidations_applied_total",
        Kind::Counter,
        &["source"],
        "shared mode: cache invalidation fan-out",
    ),
    (
        "costguard_invalidations_published_total",
        Kind::Counter,
        &[],
        "shared mode: cache invalidation fan-out",
    ),
    (
        "costguard_invalidation_errors_total",
        Kind::Counter,
        &[],
        "shared mode: cache invalidation fan-out",
    ),
    (
        "costguard_invalidation_pubsub_up",
        Kind::Gauge,
        &[],
        "shared mode: the Redis invalidation subscription",
    ),
    (
        "costguard_sso_logins_total",
        Kind::Counter,
        &["provider", "method", "outcome"],
        "single sign-on configured ([[sso.oidc]] / [[sso.saml]])",
    ),
    (
        "costguard_jwks_fetches_total",
        Kind::Counter,
        &["provider", "result"],
        "an OpenID provider configured ([[sso.oidc]])",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// --- the exposition --------------------------------------------------------

/// One scraped page: families by name (from `# TYPE`), and every sample
/// name with the label names and values seen on it.
#[derive(Debug, Default)]
struct Page {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// A sample line's name and labels (label values may hold `{`, `}`, `,`
/// and escaped quotes: route templates do).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>) {
    let end = line.find(['{', ' ']).expect("a sample has a value");
    let name = line[..end].to_string();
    let mut labels = Vec::new();
    let rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.chars().peekable();
        loop {
            let mut key = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            let key = key.trim_start_matches(',').trim().to_string();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().unwrap()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.peek() {
                Some(',') => {
                    chars.next();
                    if chars.peek() == Some(&'}') {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    (name, labels)
}

fn parse_page(text: &str) -> Page {
    let mut page = Page::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert!(
                page.families
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family {name} twice"
            );
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (name, labels) = parse_sample(line);
            let entry = page.samples.entry(name).or_default();
            for (k, v) in labels {
                entry.entry(k).or_default().insert(v);
            }
        }
    }
    page
}

/// The family a sample belongs to, by the suffixes its type allows
/// (Prometheus text: counters are named with `_total`, info metrics with
/// `_info`, both in the family name already; histograms add `_bucket`,
/// `_sum`, `_count`).
fn family_of<'a>(families: &'a BTreeMap<String, String>, sample: &str) -> Option<&'a str> {
    if let Some((f, _)) = families.get_key_value(sample) {
        return Some(f);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|s| {
        let base = sample.strip_suffix(s)?;
        let (f, kind) = families.get_key_value(base)?;
        (kind == "histogram").then_some(f.as_str())
    })
}

/// The OpenMetrics page's families (named without `_total` / `_info`) must
/// be the Prometheus text page's, suffixed by their type.
fn same_families(prometheus: &Page, openmetrics: &Page) {
    let mut mapped = BTreeMap::new();
    for (name, kind) in &openmetrics.families {
        let (name, kind) = match kind.as_str() {
            "counter" => (format!("{name}_total"), "counter"),
            "info" => (format!("{name}_info"), "gauge"),
            k => (name.clone(), k),
        };
        mapped.insert(name, kind.to_string());
    }
    assert_eq!(
        mapped, prometheus.families,
        "OpenMetrics families, suffixed by type, against the Prometheus text page"
    );
}

// --- PromQL ------------------------------------------------------------------

/// What one PromQL expression names.
#[derive(Debug, Default)]
struct Refs {
    /// Metric and recording-rule names.
    names: BTreeSet<String>,
    /// (metric, label, matcher op, value) of every selector matcher.
    matchers: Vec<(String, String, String, String)>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`,
    /// `group_right`.
    grouping: BTreeSet<String>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL scanner: identifiers, selectors and grouping clauses,
/// string literals skipped, Grafana's `$variables` and numbers/durations
/// passed over.
fn scan(expr: &str) -> Refs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let string_at = |i: usize| -> (String, usize) {
        let q = chars[i];
        let mut j = i + 1;
        let mut s = String::new();
        while j < chars.len() && chars[j] != q {
            if chars[j] == '\\' && q != '`' {
                j += 1;
            }
            s.push(chars[j]);
            j += 1;
        }
        (s, j + 1)
    };
    let ident_at = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < chars.len() && is_ident(chars[j]) {
            j += 1;
        }
        (chars[i..j].iter().collect(), j)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_at(i).1;
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                i = ident_at(i).1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let (ident, j) = ident_at(i);
            let k = skip_ws(j);
            let next = chars.get(k).copied();
            if GROUPING.contains(&ident.as_str()) && next == Some('(') {
                let mut m = k + 1;
                loop {
                    m = skip_ws(m);
                    match chars.get(m) {
                        Some(')') | None => break,
                        Some(',') => m += 1,
                        Some(_) => {
                            let (label, n) = ident_at(m);
                            assert!(!label.is_empty(), "{expr}: grouping at {m}");
                            refs.grouping.insert(label);
                            m = n;
                        }
                    }
                }
                i = m + 1;
            } else if next == Some('(') {
                // A function or an aggregation.
                i = j;
            } else {
                let is_metric = ident.starts_with("costguard_") || ident.contains(':');
                if is_metric {
                    refs.names.insert(ident.clone());
                }
                i = j;
                if is_metric && next == Some('{') {
                    let mut m = k + 1;
                    loop {
                        m = skip_ws(m);
                        match chars.get(m) {
                            Some('}') | None => break,
                            Some(',') => m += 1,
                            Some(_) => {
                                let (label, n) = ident_at(m);
                                assert!(!label.is_empty(), "{expr}: selector at {m}");
                                let mut n = skip_ws(n);
                                let mut op = String::new();
                                while matches!(chars.get(n), Some('=' | '!' | '~')) {
                                    op.push(chars[n]);
                                    n += 1;
                                }
                                n = skip_ws(n);
                                let (value, n) = string_at(n);
                                refs.matchers.push((ident.clone(), label, op, value));
                                m = n;
                            }
                        }
                    }
                    i = m + 1;
                }
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The `expr:` values of a rule file (one line, or a `|` / `>` block:
/// every following line indented deeper), and the `record:` names.
fn rule_exprs(yaml: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if let Some(r) = t.strip_prefix("- record:") {
            records.insert(r.trim().to_string());
        }
        let Some(v) = t.strip_prefix("expr:") else {
            continue;
        };
        let v = v.trim();
        if v.starts_with('|') || v.starts_with('>') {
            let mut block = String::new();
            for l in &lines[n + 1..] {
                if !l.trim().is_empty() && indent(l) <= indent(line) {
                    break;
                }
                block.push_str(l.trim());
                block.push('\n');
            }
            exprs.push(block);
        } else {
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            exprs.push(v.to_string());
        }
    }
    (exprs, records)
}

/// Every query of the dashboard: each `expr` anywhere in the panels (rows
/// nest theirs) and each query variable's query (`label_values(…)`).
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push((title.to_string(), e.clone())),
                        _ => walk(v, title, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], "", &mut out);
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap();
            out.push((format!("variable {}", var["name"]), q.to_string()));
        }
    }
    out
}

/// The `series:` of the rule tests' input (their names and labels must be
/// real too, or a "must not fire" case passes for the wrong reason).
fn test_series(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- series:"))
        .map(|s| s.trim().trim_matches('\'').to_string())
        .collect()
}

// --- the source ----------------------------------------------------------------

fn source_files(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            source_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p, text));
        }
    }
}

/// Where src/ registers `name` (as the encoder gets it: without `_total`),
/// its type there, and the text of the registration (its labels).
fn registration<'a>(src: &'a [(PathBuf, String)], base: &str) -> Option<(Kind, &'a str)> {
    let quoted = format!("\"{base}\"");
    for (_, text) in src {
        let Some(at) = text.find(&quoted) else {
            continue;
        };
        let before = &text[..at];
        let helper = [
            "metrics::counter(",
            "metrics::counters(",
            "metrics::gauge(",
            "encode_descriptor(",
        ]
        .iter()
        .filter_map(|h| before.rfind(h).map(|p| (p, *h)))
        .max()?;
        let after = &text[at + quoted.len()..];
        let end = after.find("\"costguard_").unwrap_or(after.len()).min(1500);
        let call = &after[..end];
        let kind = match helper.1 {
            "metrics::counter(" | "metrics::counters(" => Kind::Counter,
            "metrics::gauge(" => Kind::Gauge,
            _ if call.contains("MetricType::Counter") => Kind::Counter,
            _ if call.contains("MetricType::Gauge") => Kind::Gauge,
            _ => return None,
        };
        return Some((kind, call));
    }
    None
}

/// Whether `value` is written as a string literal somewhere in src/.
fn literal_in_source(src: &[(PathBuf, String)], value: &str) -> bool {
    let quoted = format!("\"{value}\"");
    src.iter().any(|(_, t)| t.contains(&quoted))
}

// --- the test ------------------------------------------------------------------

async fn scrape(url: &str, openmetrics: bool) -> String {
    let headers: &[(&str, &str)] = if openmetrics {
        &[("accept", "application/openmetrics-text; version=1.0.0")]
    } else {
        &[]
    };
    let (status, _, body) = send("GET", url, headers, String::new()).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rules_and_the_dashboard_use_only_exported_metrics_and_labels() {
    // A sidecar with the read-only metrics listener Prometheus scrapes in
    // deploy/kubernetes/, making every kind of decision.
    let up = Upstream::start().await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = support::test_policy(policy_dir.path());
    let cg = Sidecar::start(
        &support::config_for(
            &up.url(),
            &format!(
                "upstream_response_timeout = \"300ms\"\n{}",
                support::NO_AUTH_THROTTLE
            ),
        ),
        &[
            ("COSTGUARD_POLICY_DIR", policy.to_str().unwrap()),
            ("COSTGUARD_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    // The log reader stores the Listening line just after start returns.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics_addr = loop {
        let found = cg
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "Listening.")
            .and_then(|v| v["metrics"].as_str().map(str::to_string));
        if let Some(addr) = found {
            break addr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Listening line names the metrics address:\n{}",
            cg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = cg.create_tenant("standard");
    let other = cg.create_tenant("standard");
    let (_, key) = cg.create_key(&t, &["viewer"]);
    let (_, limited) = cg.create_key_with(
        &t,
        serde_json::json!({"roles": ["viewer"], "rate_limit_per_minute": 1}),
    );
    let costs = cg.url(&format!("/v1/tenants/{t}/costs"));
    // Allowed: the upstream answers 2xx, 5xx, and not in time.
    assert_eq!(get_as(&costs, &key).await.0, 200);
    let (status, _, _) = send(
        "GET",
        &costs,
        &[("x-api-key", key.as_str()), ("x-test-status", "503")],
        String::new(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(get_as(&cg.url("/hang"), &key).await.0, 504);
    // Denied: no credential, an unknown key, a missing permission, another
    // tenant, the key's rate.
    assert_eq!(get(&costs).await.0, 401);
    let unknown = "cg_live_unknownunknownunknownunknown00";
    assert_eq!(
        send("GET", &costs, &[("x-api-key", unknown)], String::new())
            .await
            .0,
        401
    );
    let budgets = cg.url(&format!("/v1/tenants/{t}/budgets"));
    let (status, _, _) = send("POST", &budgets, &[("x-api-key", &key)], "{}".into()).await;
    assert_eq!(status, 403);
    let theirs = cg.url(&format!("/v1/tenants/{other}/costs"));
    assert_eq!(get_as(&theirs, &key).await.0, 403);
    assert_eq!(get_as(&costs, &limited).await.0, 200);
    assert_eq!(get_as(&costs, &limited).await.0, 429);
    // Local.
    assert_eq!(get(&cg.url("/health")).await.0, 200);
    // A policy change that does not compile, so the reload counters move.
    std::fs::write(policy.join("broken.toml"), "[[routes]]\nmethod = \n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let admin_url = format!("http://{}/metrics", cg.admin);
    while !scrape(&admin_url, false)
        .await
        .contains("costguard_policy_last_reload_rejected 1\n")
    {
        assert!(std::time::Instant::now() < deadline, "no rejection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics_url = format!("http://{metrics_addr}/metrics");
    let text = scrape(&metrics_url, false).await;
    let page = parse_page(&text);
    let admin_page = parse_page(&scrape(&admin_url, false).await);
    assert_eq!(
        page.families, admin_page.families,
        "the metrics port and the admin port serve the same families"
    );
    same_families(&page, &parse_page(&scrape(&metrics_url, true).await));
    for sample in page.samples.keys() {
        assert!(
            family_of(&page.families, sample).is_some(),
            "sample {sample} belongs to no # TYPE family:\n{text}"
        );
    }
    let exported: BTreeSet<&str> = page.samples.keys().map(String::as_str).collect();
    // Every decision kind and upstream outcome is on the page, so the label
    // values the rules match are checked against real series.
    let requests = &page.samples["costguard_requests_total"];
    for (label, want) in [
        ("decision", &["allowed", "denied", "local"][..]),
        ("upstream_status", &["2xx", "5xx", "error", "none"][..]),
        ("auth_method", &["api_key", "none"][..]),
    ] {
        for v in want {
            assert!(
                requests[label].contains(*v),
                "{label}={v} in costguard_requests_total:\n{text}"
            );
        }
    }

    // What the rules and the dashboard name.
    let rules_yaml = read("deploy/monitoring/costguard-rules.yaml");
    let (rule_exprs, records) = rule_exprs(&rules_yaml);
    let rule_count = rules_yaml
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(rule_exprs.len(), rule_count, "one expr per rule");
    assert!(rule_count >= 20, "{rule_count} rules");
    let dash: Value =
        serde_json::from_str(&read("deploy/monitoring/costguard-dashboard.json")).unwrap();
    let dash_exprs = dashboard_exprs(&dash);
    assert!(
        dash_exprs.len() >= 40,
        "{} dashboard queries",
        dash_exprs.len()
    );
    let tests_yaml = read("deploy/monitoring/costguard-rules.test.yaml");
    let mut all: Vec<(String, String)> = rule_exprs
        .iter()
        .map(|e| ("costguard-rules.yaml".to_string(), e.clone()))
        .chain(
            dash_exprs
                .into_iter()
                .map(|(t, e)| (format!("dashboard panel {t:?}"), e)),
        )
        .collect();
    all.extend(
        test_series(&tests_yaml)
            .into_iter()
            .map(|s| ("costguard-rules.test.yaml input".to_string(), s)),
    );

    let mut src = Vec::new();
    source_files(&root().join("src"), &mut src);
    // The allow-listed names: registered in src/ under that type and those
    // labels, and really absent here (else they belong on the page).
    let mut allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, kind, labels, why) in NOT_EXPORTED_HERE {
        assert!(
            !exported.contains(name),
            "{name} is exported after all ({why}): drop it from NOT_EXPORTED_HERE"
        );
        let base = match kind {
            Kind::Counter => name
                .strip_suffix("_total")
                .unwrap_or_else(|| panic!("counter {name} without _total")),
            Kind::Gauge => name,
        };
        let (found, call) = registration(&src, base)
            .unwrap_or_else(|| panic!("{name} ({why}): \"{base}\" is registered nowhere in src/"));
        assert_eq!(
            found, *kind,
            "{name}: src/ registers {base} as another type"
        );
        for l in *labels {
            assert!(
                call.contains(&format!("\"{l}\"")),
                "{name}: label {l} not in its registration:\n{call}"
            );
        }
        allowed.insert(name, labels.iter().copied().collect());
    }

    // The labels a name carries: a series' labels on the page, an allowed
    // name's declared ones, a recording rule's (those its expression groups
    // by), each with the scrape's target labels.
    let mut record_labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (record, expr) in recording_rules(&rules_yaml) {
        let refs = scan(&expr);
        let mut labels = refs.grouping.clone();
        labels.remove("le");
        record_labels.insert(record, labels);
    }
    let labels_of = |name: &str| -> Option<BTreeSet<String>> {
        let mut set: BTreeSet<String> = if let Some(s) = page.samples.get(name) {
            s.keys().cloned().collect()
        } else if let Some(l) = allowed.get(name) {
            l.iter().map(|s| s.to_string()).collect()
        } else {
            record_labels.get(name)?.clone()
        };
        set.extend(TARGET_LABELS.iter().map(|s| s.to_string()));
        Some(set)
    };

    let mut checked: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for (place, expr) in &all {
        let refs = scan(expr);
        let mut in_scope: BTreeSet<String> = BTreeSet::new();
        for name in &refs.names {
            if name.contains(':') {
                if !records.contains(name) {
                    problems.push(format!("{place}: recording rule {name} is not defined in costguard-rules.yaml\n  {expr}"));
                }
            } else if exported.contains(name.as_str()) || allowed.contains_key(name.as_str()) {
                checked.insert(name.clone());
            } else {
                problems.push(format!(
                    "{place}: {name} is not exported by costguard (page: {:?})\n  {expr}",
                    exported
                ));
            }
            if let Some(l) = labels_of(name) {
                in_scope.extend(l);
            }
        }
        for (name, label, op, value) in &refs.matchers {
            let Some(labels) = labels_of(name) else {
                continue;
            };
            if !labels.contains(label) {
                problems.push(format!(
                    "{place}: {name} has no label {label:?} (it has {labels:?})\n  {expr}"
                ));
                continue;
            }
            if TARGET_LABELS.contains(&label.as_str())
                || OPEN_LABELS.contains(&label.as_str())
                || value.contains('$')
            {
                continue;
            }
            // The values a selector matches: one value, or an alternation
            // of plain values.
            let values: Vec<&str> = if op == "=~" || op == "!~" {
                value.split('|').collect()
            } else {
                vec![value.as_str()]
            };
            let seen: BTreeSet<&str> = page
                .samples
                .values()
                .filter_map(|l| l.get(label))
                .flatten()
                .map(String::as_str)
                .collect();
            for v in values {
                let plain = v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '+');
                if !plain {
                    continue;
                }
                if !seen.contains(v) && !literal_in_source(&src, v) {
                    problems.push(format!(
                        "{place}: {name}{{{label}{op}{value:?}}}: {v:?} is no value costguard writes (page: {seen:?})\n  {expr}"
                    ));
                }
            }
        }
        for label in &refs.grouping {
            if !in_scope.contains(label) {
                problems.push(format!(
                    "{place}: groups by {label:?}, a label of none of {:?} ({in_scope:?})\n  {expr}",
                    refs.names
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for must in [
        "costguard_requests_total",
        "costguard_decision_duration_seconds_bucket",
        "costguard_request_duration_seconds_bucket",
        "costguard_upstream_errors_total",
        "costguard_audit_write_failures_total",
        "costguard_audit_unwritable",
        "costguard_audit_disk_low",
        "costguard_audit_disk_free_bytes",
        "costguard_policy_last_reload_rejected",
        "costguard_jwks_fetches_total",
    ] {
        assert!(checked.contains(must), "the rules or dashboard use {must}");
    }
    println!(
        "{} metric names checked ({} exported here, {} shared-mode/SSO only, verified in src/), {} expressions: {}",
        checked.len(),
        checked
            .iter()
            .filter(|n| exported.contains(n.as_str()))
            .count(),
        checked
            .iter()
            .filter(|n| allowed.contains_key(n.as_str()))
            .count(),
        all.len(),
        checked.iter().cloned().collect::<Vec<_>>().join(" ")
    );
}

/// The recording rules: (name, expression), for the labels they keep.
fn recording_rules(yaml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let Some(name) = line.trim_start().strip_prefix("- record:") else {
            continue;
        };
        // The first expr after the name is the rule's.
        let (exprs, _) = rule_exprs(&lines[n + 1..].join("\n"));
        out.push((name.trim().to_string(), exprs[0].clone()));
    }
    out
}

#[test]
fn the_scanner_finds_names_selectors_and_grouping() {
    let refs = scan(
        "sum by (namespace, job) (rate(costguard_requests_total{decision=\"denied\", reason=~\"a|b\", route=\"/v1/{tenant}\"}[$__rate_interval])) / ignoring(x) ns:costguard_x:rate5m offset 1h",
    );
    assert_eq!(
        refs.names,
        BTreeSet::from([
            "costguard_requests_total".to_string(),
            "ns:costguard_x:rate5m".to_string()
        ])
    );
    assert_eq!(
        refs.grouping,
        BTreeSet::from(["namespace".into(), "job".into(), "x".into()])
    );
    assert_eq!(refs.matchers.len(), 3);
    assert_eq!(refs.matchers[1].2, "=~");
    assert_eq!(refs.matchers[2].3, "/v1/{tenant}");
    let (name, labels) =
        parse_sample("costguard_requests_total{route=\"/v1/{tenant},x\",b=\"q\\\"\"} 3");
    assert_eq!(name, "costguard_requests_total");
    assert_eq!(
        labels,
        vec![
            ("route".into(), "/v1/{tenant},x".into()),
            ("b".into(), "q\"".into())
        ]
    );
    let (exprs, records) = rule_exprs(
        "      - record: a:b:c\n        expr: |\n          sum(x)\n            / y\n        labels: {}\n      - alert: A\n        expr: up == 0\n",
    );
    assert_eq!(
        exprs,
        vec!["sum(x)\n/ y\n".to_string(), "up == 0".to_string()]
    );
    assert_eq!(records, BTreeSet::from(["a:b:c".to_string()]));
}
