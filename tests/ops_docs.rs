//! docs/operations.md's production material: the Grafana dashboard is valid JSON,
//! and the dashboard and the alert rules query only the series the relay exports
//! (the names fixed in the metrics table of issue 15).

use std::path::Path;

const COUNTERS: &[&str] = &[
    "outboxer_messages_published_total",
    "outboxer_messages_failed_total",
    "outboxer_messages_parked_total",
    "outboxer_messages_released_total",
    "outboxer_outcomes_dropped_total",
    "outboxer_relay_starts_total",
    "outboxer_relay_panics_total",
];
const HISTOGRAMS: &[&str] = &[
    "outboxer_claim_duration_seconds",
    "outboxer_publish_duration_seconds",
    "outboxer_mark_duration_seconds",
    "outboxer_commit_to_publish_lag_seconds",
    "outboxer_batch_messages",
];
const GAUGES: &[&str] = &[
    "outboxer_pending_messages",
    "outboxer_oldest_pending_age_seconds",
    "outboxer_parked_messages",
    "outboxer_held_keys",
    "outboxer_scheduled_messages",
    "outboxer_up",
];

/// A series name as Prometheus exposes it (histograms as `_bucket`, `_sum`, `_count`).
fn known(name: &str) -> bool {
    COUNTERS.contains(&name)
        || GAUGES.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{h}{s}"))
        })
}

/// Every `outboxer_…` identifier in a query.
fn series(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("outboxer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_grafana_dashboard_is_json_and_uses_only_exported_series() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docs/grafana-dashboard.json")).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut used = std::collections::HashSet::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = series(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(known(&n), "unknown series {n} in {expr}");
                used.insert(n);
            }
        }
    }
    for must in [
        "outboxer_up",
        "outboxer_pending_messages",
        "outboxer_oldest_pending_age_seconds",
        "outboxer_parked_messages",
        "outboxer_messages_published_total",
        "outboxer_messages_failed_total",
        "outboxer_commit_to_publish_lag_seconds_bucket",
    ] {
        assert!(used.contains(must), "the dashboard shows {must}");
    }
}

#[test]
fn the_alert_rules_and_units_in_operations_md_hold_together() {
    let doc = read("docs/operations.md");
    let start = doc.find("```yaml\ngroups:").expect("the alert rules block");
    let rules = &doc[start..start + doc[start..][7..].find("```").expect("end") + 7];
    let mut alerts = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alerts.push(name.to_string());
        }
        for n in series(line) {
            assert!(known(&n), "unknown series {n} in: {line}");
        }
    }
    for needed in [
        "OutboxerRelayDown",
        "OutboxerOldestPendingTooOld",
        "OutboxerParkedMessages",
        "OutboxerPublishFailures",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "{needed} in {alerts:?}");
    }
    for needed in [
        "TimeoutStopSec=45",
        "terminationGracePeriodSeconds: 45",
        "ENTRYPOINT [\"/usr/local/bin/outboxer\"]",
        "USER 10001",
        "ExecStartPre=/usr/local/bin/outboxer check",
    ] {
        assert!(doc.contains(needed), "operations.md shows {needed}");
    }
}
