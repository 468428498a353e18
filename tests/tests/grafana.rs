//! The Grafana dashboard (ops/grafana/dashboard.json): every panel's SQL runs against a populated
//! database as a role that holds only engage_analyst, with Grafana's time macros expanded as the
//! PostgreSQL data source expands them, and the panels over data show data.

use pg_engage_it::*;
use std::collections::BTreeMap;

const DASHBOARD: &str = include_str!("../../ops/grafana/dashboard.json");
const DATASOURCES: &str = include_str!("../../ops/grafana/provisioning/datasources/pg_engage.yml");

/// Grafana's macros for a 7-day range, as SQL.
fn expand_macros(sql: &str) -> String {
    let mut out = sql.to_string();
    while let Some(start) = out.find("$__timeFilter(") {
        let end = start + out[start..].find(')').expect("closing parenthesis of $__timeFilter");
        let column = &out[start + "$__timeFilter(".len()..end];
        let expanded = format!("{column} BETWEEN now() - interval '7 days' AND now()");
        out.replace_range(start..=end, &expanded);
    }
    out.replace("$__timeFrom()", "(now() - interval '7 days')").replace("$__timeTo()", "now()")
}

/// A shop's last days: carts, orders after some of them, messages sent, rollups refreshed.
fn populate(c: &mut Client) {
    c.batch_execute("INSERT INTO engage.channels (kind, config, cost_per_message) VALUES ('webhook', '{\"url\": \"https://example.com/hook\"}', 0.01)")
        .unwrap();
    create_trigger(
        c,
        "cart",
        json!({"event": "cart_updated", "action": {"channel": "webhook"}, "holdout": 0.3,
               "goal": {"event": "order_completed", "within": "2d", "value": "amount"}}),
    );
    c.batch_execute(
        "INSERT INTO engage.events (customer_id, name, properties, occurred_at)
         SELECT 'c' || i, 'cart_updated', jsonb_build_object('value', i), now() - interval '3 hours' - i * interval '1 minute'
           FROM generate_series(1, 200) i;
         WITH claimed AS (SELECT id, lease FROM engage.claim(1000, '5 minutes', 'test'))
         SELECT engage.complete_many(array_agg(id), array_agg(lease), array_agg('p-' || id)) FROM claimed;",
    )
    .unwrap_or_else(|e| panic!("populate: {}", error_text(&e)));
    // Orders after the messages went out, from every other customer (treated and held out).
    c.batch_execute(
        "INSERT INTO engage.events (customer_id, name, properties)
         SELECT 'c' || i, 'order_completed', jsonb_build_object('amount', 20 + i) FROM generate_series(1, 200, 2) i",
    )
    .unwrap_or_else(|e| panic!("orders: {}", error_text(&e)));
    while c.query_one("SELECT engage.refresh_metrics()", &[]).unwrap().get::<_, i32>(0) > 0 {}
}

#[test]
fn every_panel_of_the_dashboard_runs_as_the_analyst_and_shows_the_data() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "volume, anomalies, fire rate, responses, revenue/ROI, uplift, latency, queue");

    let db = "grafana";
    let mut admin = shared().create_db(db);
    populate(&mut admin);
    let mut analyst = connect_as_member(shared(), db, "grafana", &["engage_analyst"]);

    let mut rows_by_title = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title").to_string();
        let uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(DATASOURCES.contains(&format!("uid: {uid}")), "panel {title:?}: data source {uid:?} is provisioned");
        let targets =
            panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
        for target in targets {
            let sql = expand_macros(target["rawSql"].as_str().unwrap_or_else(|| panic!("{title}: rawSql")));
            let rows = analyst
                .simple_query(&sql)
                .unwrap_or_else(|e| panic!("panel {title:?} as engage_analyst: {}\n{sql}", error_text(&e)));
            let n = rows.iter().filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_))).count();
            rows_by_title.insert(title.clone(), n);
        }
    }
    for (title, at_least) in [
        ("Messages fired per hour, by trigger", 1),
        ("Fire rate and suppressions", 1),
        ("Response rates", 1),
        ("Revenue and ROI", 1),
        ("Holdout uplift (95% interval)", 1),
        ("Latency percentiles, event to send (s)", 1),
        ("Queue", 1),
    ] {
        let n = rows_by_title.get(title).copied().unwrap_or_else(|| panic!("no panel {title:?}: {rows_by_title:?}"));
        assert!(n >= at_least, "panel {title:?} shows {n} rows over a populated database");
    }
    // The revenue panel reads what the orders brought.
    let revenue: Option<String> = analyst
        .query_one("SELECT attributed_revenue::text FROM engage.trigger_roi WHERE trigger = 'cart'", &[])
        .unwrap()
        .get(0);
    assert!(revenue.as_deref().is_some_and(|r| r != "0"), "attributed revenue {revenue:?}");
}
