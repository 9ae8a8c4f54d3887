//! Rule evaluation micro-benchmarks: a deployment-sized rule set (100
//! filters, 50 routes) against a ~5 KB GitHub pull_request event, and one
//! small jq transformation.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use event_router::rules::{Agent, EventFilter, EventRoute, RuleOptions, RuleSet};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/github_pull_request.json");

fn event() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

/// Scopes used by filters and routes that do not concern the fixture, as in
/// a real deployment serving several providers.
const OTHER_SCOPES: [(&str, &str); 8] = [
    ("linear", "issue"),
    ("linear", "comment"),
    ("slack", "message"),
    ("slack", "app_mention"),
    ("internal", "deploy"),
    ("github", "push"),
    ("github", "issues"),
    ("github", "workflow_run"),
];

fn condition(i: usize) -> Value {
    match i % 7 {
        0 => json!({"field": "payload.data.priority", "operator": "gt", "value": 2}),
        1 => {
            json!({"field": "payload.data.team.key", "operator": "in", "value": ["ENG", "OPS", "SEC"]})
        }
        2 => {
            json!({"field": "payload.event.text", "operator": "regex", "value": "(?i)deploy|rollback|incident"})
        }
        3 => json!({"field": "payload.ref", "operator": "equals", "value": "refs/heads/main"}),
        4 => {
            json!({"field": "payload.issue.labels.name", "operator": "contains", "value": "bug", "caseSensitive": false})
        }
        5 => {
            json!({"field": "payload.sender.login", "operator": "regex", "value": "\\[bot\\]$", "negate": true})
        }
        _ => json!({"field": "metadata.identifier", "operator": "exists", "value": true}),
    }
}

fn filters() -> Vec<EventFilter> {
    let mut out = Vec::new();
    // 80 filters scoped to other sources or event types.
    for i in 0..80 {
        let (source, ty) = OTHER_SCOPES[i % OTHER_SCOPES.len()];
        let action = if i % 3 == 0 { "exclude" } else { "include" };
        out.push(
            json!({"id": format!("other-{i}"), "name": format!("other {i}"),
            "source": source, "eventType": ty, "action": action, "priority": i,
            "conditions": [condition(i), condition(i + 3)]}),
        );
    }
    // 10 on github pull_request: excludes that do not match, includes of
    // which some match.
    let pr = [
        json!({"action": "exclude", "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true}]}),
        json!({"action": "exclude", "conditions": [{"field": "payload.pull_request.labels.name", "operator": "equals", "value": "wip"}]}),
        json!({"action": "exclude", "conditions": [{"field": "payload.sender.login", "operator": "regex", "value": "^(dependabot|renovate)\\[bot\\]$"}]}),
        json!({"action": "exclude", "conditions": [{"field": "payload.pull_request.title", "operator": "contains", "value": "[skip ci]", "caseSensitive": false}]}),
        json!({"action": "exclude", "conditions": [{"field": "payload.repository.private", "operator": "equals", "value": true},
                                                    {"field": "payload.repository.visibility", "operator": "equals", "value": "internal"}]}),
        json!({"action": "include", "conditions": [{"field": "payload.repository.full_name", "operator": "in", "value": ["acme/api", "acme/web"]}]}),
        json!({"action": "include", "conditions": [{"field": "payload.pull_request.base.ref", "operator": "equals", "value": "release"}]}),
        json!({"action": "include", "conditions": [{"field": "payload.action", "operator": "in", "value": ["opened", "synchronize", "reopened"]},
                                                    {"field": "payload.pull_request.additions", "operator": "lt", "value": 5000}]}),
        json!({"action": "include", "conditions": [{"field": "payload.pull_request.user.login", "operator": "regex", "value": "^hu"}]}),
        json!({"action": "include", "conditions": [{"field": "payload.pull_request.state", "operator": "equals", "value": "OPEN", "caseSensitive": false}]}),
    ];
    for (i, mut f) in pr.into_iter().enumerate() {
        f["id"] = json!(format!("pr-{i}"));
        f["name"] = json!(format!("pr {i}"));
        f["source"] = json!("github");
        f["eventType"] = json!("pull_request");
        out.push(f);
    }
    // 10 unscoped excludes that do not match.
    for i in 0..10 {
        out.push(json!({"id": format!("global-{i}"), "name": "global", "action": "exclude",
            "conditions": [{"field": "metadata.identifier", "operator": "equals", "value": format!("blocked-{i}")}]}));
    }
    out.into_iter()
        .map(|v| serde_json::from_value(v).expect("filter"))
        .collect()
}

fn routes() -> Vec<EventRoute> {
    let mut out = Vec::new();
    for i in 0..40 {
        let (source, ty) = OTHER_SCOPES[i % OTHER_SCOPES.len()];
        out.push(json!({"id": format!("route-other-{i}"), "name": "other", "priority": i % 5,
            "targetAgents": [format!("agent-{}", i % 20), format!("agent-{}", (i + 7) % 20)],
            "sourceFilters": [{"action": "include", "source": source, "eventType": ty, "conditions": [condition(i)]},
                              {"action": "exclude", "conditions": [condition(i + 1)]}]}));
    }
    let pr_filters = [
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.labels.name", "operator": "equals", "value": "bug"}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.title", "operator": "regex", "value": "(?i)\\b(fix|bug|crash)\\b"}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.labels.name", "operator": "equals", "value": "security"}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request"},
               {"action": "exclude", "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.changed_files", "operator": "gt", "value": 50}]}]),
        json!([{"action": "include", "source": "github",
                "conditions": [{"field": "payload.repository.topics", "operator": "contains", "value": "agents"}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.requested_reviewers.login", "operator": "equals", "value": "other_user"}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.base.ref", "operator": "equals", "value": "release"}]}]),
        json!([{"action": "exclude", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.merged", "operator": "equals", "value": true}]}]),
        json!([{"action": "include", "source": "github", "eventType": "pull_request",
                "conditions": [{"field": "payload.pull_request.user.login", "operator": "in", "value": ["alice", "bob"]}]}]),
    ];
    for (i, filters) in pr_filters.into_iter().enumerate() {
        out.push(json!({"id": format!("route-pr-{i}"), "name": "pr", "priority": 10 - i as i64,
            "targetAgents": [format!("agent-{}", i * 2 % 20), format!("agent-{}", (i * 3 + 1) % 20)],
            "sourceFilters": filters}));
    }
    out.into_iter()
        .map(|v| {
            let mut r: EventRoute = serde_json::from_value(v).expect("route");
            event_router::rules::validate::fill_route_defaults(&mut r);
            r
        })
        .collect()
}

fn agents() -> Vec<Agent> {
    (0..20)
        .map(|i| {
            serde_json::from_value(
                json!({"id": format!("agent-{i}"), "name": format!("Agent {i}"),
                "url": format!("https://agent-{i}.example.com/hook")}),
            )
            .expect("agent")
        })
        .collect()
}

fn bench_evaluate(c: &mut Criterion) {
    let rules = RuleSet::build(&filters(), &routes(), &agents(), RuleOptions::default())
        .expect("rule set builds");
    let mut event = event();
    let check = rules.evaluate(&mut event.clone());
    assert!(check.processed);
    assert!(check.deliveries.len() >= 5, "{check:?}");

    c.bench_function("evaluate/100 filters 50 routes/github pull_request", |b| {
        // Without transformations `evaluate` leaves the event as it is, so
        // the same value can be reused.
        b.iter(|| black_box(rules.evaluate(black_box(&mut event))))
    });

    let mut linear: Value = json!({"id": "x", "source": "linear", "type": "issue", "deliveryId": "d",
        "timestamp": 1, "payload": {"data": {"priority": 1, "team": {"key": "ENG"}}}, "metadata": {"identifier": "org"}});
    c.bench_function(
        "evaluate/100 filters 50 routes/filtered linear issue",
        |b| b.iter(|| black_box(rules.evaluate(black_box(&mut linear)))),
    );
}

fn bench_transform(c: &mut Criterion) {
    let route: EventRoute = serde_json::from_value(json!({"id": "slim", "name": "slim", "targetAgents": ["agent-0"],
        "transformation": {"type": "jq", "expression":
            "{id, source, type, action, timestamp, repo: .payload.repository.full_name, pr: .payload.pull_request.number, title: .payload.pull_request.title, labels: [.payload.pull_request.labels[].name]}"}}))
    .expect("route");
    let rules = RuleSet::build(&[], &[route], &agents(), RuleOptions::default()).expect("builds");
    let mut event = event();
    let check = rules.evaluate(&mut event);
    assert!(matches!(
        check.deliveries[0].body,
        event_router::rules::PlannedBody::Transformed(_)
    ));
    c.bench_function("evaluate/one route with a small jq transformation", |b| {
        b.iter(|| black_box(rules.evaluate(black_box(&mut event))))
    });
}

/// One route whose filter reads the payload, as ingest meets it: the payload still JSON text.
/// Parsing the whole tree first (what ingest did before) against the one-pass projection.
fn bench_payload_condition(c: &mut Criterion) {
    let route: EventRoute = serde_json::from_value(
        json!({"id": "pr", "name": "pr", "targetAgents": ["agent-0"],
        "sourceFilters": [{"action": "include", "conditions": [
            {"field": "payload.pull_request.number", "operator": "gt", "value": 0}]}]}),
    )
    .expect("route");
    let rules = RuleSet::build(&[], &[route], &agents(), RuleOptions::default()).expect("builds");
    let full = event();
    let text = serde_json::to_vec(&full["payload"]).expect("payload");
    let mut deferred = full.clone();
    deferred["payload"] = Value::Null;
    let (check, parsed) = rules.evaluate_deferred(&mut deferred.clone(), &text);
    assert!(check.routed() && !parsed);

    c.bench_function(
        "evaluate/payload condition/parse the tree, then evaluate",
        |b| {
            b.iter(|| {
                let mut e = deferred.clone();
                e["payload"] = serde_json::from_slice(black_box(&text)).expect("JSON");
                black_box(rules.evaluate(&mut e))
            })
        },
    );
    c.bench_function("evaluate/payload condition/projection of the text", |b| {
        b.iter(|| {
            let mut e = deferred.clone();
            black_box(rules.evaluate_deferred(&mut e, black_box(&text)))
        })
    });
}

criterion_group!(
    benches,
    bench_evaluate,
    bench_transform,
    bench_payload_condition
);
criterion_main!(benches);
