//! The shipped alert rules and dashboard (`contrib/`), tested as shipped: promtool
//! checks the rules and runs their unit tests (every alert has some), the dashboard's
//! queries parse as PromQL, and every xhubd metric either names is one a real xhubd
//! exports on `/metrics`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::faulty_upstream::{FaultyUpstream, Mode};
use common::*;

const RULES: &str = "contrib/prometheus/xhubd.rules.yml";
const RULES_TESTS: &str = "contrib/prometheus/xhubd.rules.test.yml";
const DASHBOARD: &str = "contrib/grafana/xhubd.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs `promtool ARGS` in the repository and returns what it printed; fails with its
/// output unless it succeeded.
fn promtool(args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: it comes with the Debian package prometheus, which \
             scripts/test.sh installs (or: apt-get install --no-install-recommends prometheus)"
        ),
        Err(e) => panic!("promtool could not run: {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{said}",
        args.join(" "),
        out.status
    );
    said
}

/// The values of `key: VALUE` lines (list items included), in order.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    text.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    let tested = promtool(&["test", "rules", RULES_TESTS]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Each alert has unit tests, and they name no alert the rules lack.
    let alerts: BTreeSet<String> = yaml_values(&read(RULES), "alert").into_iter().collect();
    let tested: BTreeSet<String> = yaml_values(&read(RULES_TESTS), "alertname")
        .into_iter()
        .collect();
    assert!(alerts.len() >= 7, "alerts found: {alerts:?}");
    assert_eq!(
        alerts, tested,
        "alerts in {RULES} vs those {RULES_TESTS} tests"
    );
}

/// The dashboard's queries: each panel's targets, and the selectors of its variables'
/// `label_values(...)`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {:?} without expr", panel["title"]));
            queries.push(expr.to_owned());
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    for variable in variables {
        let definition = variable["definition"].as_str().expect("definition");
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("not label_values(SELECTOR, LABEL): {definition}"));
        queries.push(selector.to_owned());
    }
    queries
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard_of_valid_promql() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(39));
    assert_eq!(dashboard["uid"], "xhubd");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["route", "destination"] {
        assert!(variables.contains(&name), "variable {name}: {variables:?}");
    }

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = panel["title"].as_str().expect("a panel title");
        titles.insert(title);
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64(), pos["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| x + w <= 24) && pos["h"].as_u64() > Some(0),
            "{title}: gridPos {pos}"
        );
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                !panel["targets"].as_array().is_none_or(Vec::is_empty),
                "{title} has no query"
            );
        }
    }
    for title in [
        "Requests by outcome",
        "Ack latency",
        "Delivery attempts by result",
        "Delivery duration p99",
        "Backlog",
        "Oldest pending",
        "Dead deliveries",
        "Destination up",
        "Rate-limited waits",
        "Claims per holder",
        "Ready",
    ] {
        assert!(titles.contains(title), "no panel {title:?}: {titles:?}");
    }

    // Every query parses: promtool checks them as recording rules, with Grafana's
    // variables replaced by what they stand for.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries(&dashboard).iter().enumerate() {
        let mut expr = query.replace("$__rate_interval", "5m");
        for variable in &variables {
            expr = expr.replace(&format!("${variable}"), ".*");
        }
        assert!(!expr.contains('$'), "a variable left in {query}");
        let quoted = serde_json::to_string(&expr).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file: PathBuf = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).expect("write the queries");
    promtool(&["check", "rules", &file.display().to_string()]);
}

/// Every `xhubd_…` name in `text` (a metric, or a histogram's or counter's series).
fn names_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("xhubd_").map(|i| from + i) {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let end = at
            + text[at..]
                .bytes()
                .take_while(|&b| b.is_ascii_lowercase() || b == b'_')
                .count();
        if (at == 0 || !word(bytes[at - 1])) && !bytes.get(end).is_some_and(|&b| word(b)) {
            names.insert(text[at..end].trim_end_matches('_').to_owned());
        }
        from = end;
    }
    names
}

/// The series names a metric family of `kind` (its `# TYPE`) is queried by.
fn series_of(family: &str, kind: &str) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "summary" => &["_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[],
    };
    std::iter::once(family.to_owned())
        .chain(suffixes.iter().map(|s| format!("{family}{s}")))
        .collect()
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_exported() {
    let mut referenced: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for file in [RULES, DASHBOARD] {
        for name in names_in(&read(file)) {
            referenced.entry(name).or_default().push(file);
        }
    }
    assert!(
        referenced.contains_key("xhubd_ready") && referenced.len() >= 10,
        "names found: {referenced:?}"
    );

    // A family appears with its first series: one delivery done (attempts, durations)
    // and one held by a backend that never answers (a claim, which only a PostgreSQL
    // spool reports).
    let backend = FaultyUpstream::start(Mode::Status(200));
    backend.for_body(&page_event(2), &[Mode::Hang]);
    let port = free_port();
    let x = Xhubd::start(
        Options::new(&backend.url("/"))
            .spool(&Spool::postgres())
            .arg("--instance-name")
            .arg("metrics-test")
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{port}")),
    );
    let admin = admin_target(port);
    for n in [1, 2] {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    let mut text = String::new();
    wait_for(
        Duration::from_secs(20),
        "a delivery attempt and a claim on /metrics",
        || {
            let answer = admin.get("/metrics");
            assert_eq!(answer.status, 200, "{}", answer.text());
            text = answer.text();
            text.contains("xhubd_delivery_attempts_total{")
                && text.contains("xhubd_spool_claimed{holder=\"metrics-test\"} 1")
        },
    );
    // Families by their `# TYPE` line (present before their first sample, e.g. a
    // destination's delivery histogram), and the series names present.
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        match line.strip_prefix("# TYPE ") {
            Some(rest) => {
                let mut words = rest.split_whitespace();
                if let (Some(family), Some(kind)) = (words.next(), words.next()) {
                    exported.extend(series_of(family, kind));
                }
            }
            None if !line.starts_with('#') => {
                if let Some(name) = line.split(['{', ' ']).next() {
                    exported.insert(name.to_owned());
                }
            }
            None => {}
        }
    }
    let missing: Vec<String> = referenced
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, files)| format!("{name} (in {})", files.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the shipped rules or dashboard, not exported by xhubd:\n  {}\nxhubd exports: {exported:?}",
        missing.join("\n  ")
    );
}
