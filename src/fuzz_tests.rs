//! Property-based fuzzing of everything that reads untrusted text or JSON without a database:
//! the definition parser (and, for what it accepts, the predicate and pattern evaluators on
//! arbitrary events), duration parsing, and the template renderer. Arbitrary input in; never a
//! panic, always Ok or an error that names where and what.
//!
//! The suite runs a fixed-seed ChaCha stream (`PG_ENGAGE_FUZZ_CASES` cases per target, 2,000 by
//! default) so CI is repeatable; a longer run is documented in README ("Fuzzing"):
//! `PG_ENGAGE_FUZZ_CASES=2000000 PG_ENGAGE_FUZZ_SEED=<n> cargo pgrx test pg15 fuzz_`.

use crate::deliver::template;
use crate::rule::{self, duration, pattern::Seen, Facts};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};

/// Words of the trigger language, so that generated objects reach deep into the validator.
const WORDS: &[&str] = &[
    "event",
    "where",
    "action",
    "priority",
    "cap",
    "wait",
    "cancel_on",
    "holdout",
    "category",
    "variants",
    "goal",
    "inactive",
    "anniversary",
    "date",
    "crosses",
    "predicted",
    "backfill",
    "pattern",
    "steps",
    "exit",
    "reentry",
    "escalate",
    "channel",
    "template",
    "payload",
    "fallback",
    "max",
    "per",
    "within",
    "count",
    "at_least",
    "at_most",
    "all_of",
    "any_of",
    "sequence",
    "same",
    "unless",
    "not_followed_by",
    "all",
    "any",
    "not",
    "property",
    "profile",
    "eq",
    "ne",
    "in",
    "lt",
    "lte",
    "gt",
    "gte",
    "exists",
    "contains",
    "ago",
    "name",
    "weight",
    "value",
    "when",
    "email",
    "sms",
    "webhook",
    "preferred",
    "transactional",
    "marketing",
    "once",
    "2h",
    "30m",
    "7d",
    "0s",
    "-1d",
    "3651d",
    "1h 30m",
    "cart.value",
    "x",
    "",
    "a.b.c",
];

fn runner() -> TestRunner {
    let cases = std::env::var("PG_ENGAGE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let seed: u64 = std::env::var("PG_ENGAGE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![4 => proptest::sample::select(WORDS).prop_map(str::to_string), 1 => ".{0,12}"]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-3i64..5).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        word().prop_map(Value::String),
        Just(Value::String("2026-01-01T00:00:00Z".into())),
    ];
    leaf.prop_recursive(8, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Definitions: mostly a valid skeleton with arbitrary parts grafted in, sometimes anything.
fn definition() -> impl Strategy<Value = Value> {
    let skeleton = (json(), json(), json(), proptest::sample::select(WORDS), json()).prop_map(
        |(condition, action, extra, field, pattern)| {
            let mut d = serde_json::json!({"event": "e", "action": {"channel": "webhook"}});
            d["where"] = condition;
            if action.is_object() {
                d["action"] = action;
            }
            d[field] = extra;
            if pattern.is_object() {
                d.as_object_mut().map(|m| m.remove("event"));
                d["pattern"] = pattern;
            }
            d
        },
    );
    prop_oneof![3 => skeleton, 1 => json()]
}

#[test]
fn fuzz_definitions_parse_or_name_the_problem_and_evaluate_without_panicking() {
    runner()
        .run(&(definition(), json(), json(), any::<i64>()), |(d, properties, profile, at)| {
            match rule::parse(&d) {
                Err(e) => {
                    prop_assert!(e.path.starts_with('$'), "path {:?}", e.path);
                    prop_assert!(!e.problem.is_empty());
                    prop_assert!(e.to_string().len() < 1_000, "a long message: {e}");
                }
                Ok(definition) => {
                    let occurred_at = crate::instant::UnixMicros::from_pg(at);
                    let facts = Facts { properties: &properties, profile: &profile, occurred_at };
                    let _ = definition.matches(&facts);
                    if let Some(p) = &definition.pattern {
                        let history = [
                            Seen { id: 1, name: "e", at: at / 2, properties: &properties },
                            Seen { id: 2, name: "e", at, properties: &profile },
                        ];
                        let _ = p.fires_at(&history, 1);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_durations_parse_or_refuse() {
    let text = prop_oneof![".{0,24}", "[0-9]{1,25}[smhdw ]{0,3}([0-9]{1,6}[smhdw])?"];
    runner()
        .run(&text, |t| {
            match duration::parse(&Value::String(t.clone()), "$.wait") {
                Ok(micros) => prop_assert!(micros > 0 && micros <= duration::MAX_MICROS, "{t:?} gave {micros}"),
                Err(e) => prop_assert_eq!(e.path, "$.wait"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_templates_render_or_refuse() {
    let tag = proptest::sample::select(
        &[
            "{{ ",
            " }}",
            "{% ",
            " %}",
            "if ",
            "for i in ",
            "(1..",
            ")",
            "endfor",
            "endif",
            "assign s = ",
            "event.properties.x",
            "profile.first_name",
            " | append: ",
            " | upcase",
            " | split: ",
            "\"a\"",
            "raw",
            "endraw",
            "capture c",
            "endcapture",
            "{{- ",
            " -}}",
            ".",
            "[0]",
            "",
            "x",
        ][..],
    );
    let text = prop_oneof![proptest::collection::vec(tag, 0..24).prop_map(|parts| parts.concat()), ".{0,64}"];
    runner()
        .run(&(text, json()), |(t, properties)| {
            let context = template::Context::object(vec![
                ("event", template::Context::from_json(&serde_json::json!({"properties": properties}))),
                ("profile", template::Context::from_json(&serde_json::json!({"first_name": "Ada"}))),
            ]);
            if template::validate(&t).is_ok() {
                let _ = template::render(&t, &context);
            }
            Ok(())
        })
        .unwrap();
}
