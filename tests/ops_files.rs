//! The metrics table in docs/metrics.md, the Grafana dashboard and the Prometheus rules under
//! deploy/ name only metrics the worker publishes, with the types, units and labels it uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use kcl_core::metrics::{CATALOG, MetricInfo, MetricKind};
use metrics::Unit;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The docs row of a metric: name, type, unit, labels, Java equivalent.
fn row(info: &MetricInfo) -> String {
    let kind = match info.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    let unit = match info.unit {
        Some(Unit::Seconds) => "seconds",
        Some(Unit::Bytes) => "bytes",
        Some(_) => "other",
        None => "-",
    };
    let mut labels = vec!["stream", "worker"];
    labels.extend(info.labels);
    let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
    format!(
        "| `{}` | {kind} | {unit} | {} | {} | {} |",
        info.name,
        labels.join(", "),
        info.help,
        info.java
    )
}

#[test]
fn the_metrics_table_lists_every_metric_as_published() {
    let doc = read("docs/metrics.md");
    let expected: Vec<String> = CATALOG.iter().map(row).collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|r| !doc.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md lacks or differs in these rows (the table should read):\n{}",
        expected.join("\n")
    );
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `kcl_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(
        documented.len(),
        CATALOG.len(),
        "a row for a metric that does not exist"
    );
}

/// The metric names an ops file refers to (histogram series without their suffix).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("kcl_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn assert_known(file: &str) {
    let text = read(file);
    let known: BTreeSet<&str> = CATALOG.iter().map(|m| m.name).collect();
    let names = referenced(&text);
    assert!(!names.is_empty(), "{file} refers to no metric");
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| {
                CATALOG
                    .iter()
                    .any(|m| m.name == *b && m.kind == MetricKind::Histogram)
            })
            .unwrap_or(&name);
        assert!(
            known.contains(base),
            "{file} refers to {name}, which the worker does not publish"
        );
    }
}

#[test]
fn the_dashboard_is_json_and_names_only_published_metrics() {
    let text = read("deploy/grafana/kcl-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 5);
    assert_known("deploy/grafana/kcl-dashboard.json");
    for needed in [
        "kcl_behind_latest_seconds",
        "kcl_records_processed_total",
        "kcl_process_records_duration_seconds_bucket",
        "kcl_leases_held",
        "kcl_read_throttles_total",
    ] {
        assert!(text.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_alert_rules_name_only_published_metrics() {
    assert_known("deploy/prometheus/kcl-alerts.yml");
}
