//! Predicates: every operator of the README's trigger language (eq, ne, in, lt, lte, gt, gte on
//! numbers, on RFC 3339 timestamps and on `{"ago": …}`, exists, contains), on event `property`
//! paths (nested keys, array indexes, the `$.` prefix) and on `profile` paths (set with
//! `engage.identify` or written directly), the `all` / `any` / `not` combinators, a customer
//! without a profile row, and event-name lists.
//!
//! Each case creates a trigger whose event name is the case name and whose template is the case
//! name, then inserts events that must match (one `fired` decision and one outbox row each) and
//! events that must not (no decision, no outbox row).

use pg_engage_it::*;

/// One predicate case on event properties: `matching` property objects must fire the trigger,
/// `not_matching` ones must leave no decision. Events occur at `occurred_at` (default now()).
#[track_caller]
fn property_case(
    c: &mut Client,
    case: &str,
    predicate: Value,
    occurred_at: Option<&str>,
    matching: &[Value],
    not_matching: &[Value],
) {
    create_trigger(c, case, json!({"event": case, "where": predicate, "action": email(case)}));
    for (i, props) in matching.iter().enumerate() {
        let customer = format!("{case}-yes-{i}");
        let id = insert(c, &customer, case, props.clone(), occurred_at);
        assert_eq!(
            decisions_for(c, id),
            vec![fired(case)],
            "case {case}: {predicate} should hold for properties {props}"
        );
    }
    for (i, props) in not_matching.iter().enumerate() {
        let customer = format!("{case}-no-{i}");
        let id = insert(c, &customer, case, props.clone(), occurred_at);
        assert_eq!(decisions_for(c, id), vec![], "case {case}: {predicate} should not hold for properties {props}");
    }
    let queued = outbox_for_template(c, Some(case)).len();
    assert_eq!(queued, matching.len(), "case {case}: outbox rows");
}

/// One predicate case on the profile: for each entry a fresh customer gets the given traits via
/// `engage.identify` (None: no profile row at all) and sends an event with empty properties.
#[track_caller]
fn profile_case(
    c: &mut Client,
    case: &str,
    predicate: Value,
    occurred_at: Option<&str>,
    matching: &[Option<Value>],
    not_matching: &[Option<Value>],
) {
    create_trigger(c, case, json!({"event": case, "where": predicate, "action": email(case)}));
    for (expect, profiles) in [(true, matching), (false, not_matching)] {
        for (i, traits) in profiles.iter().enumerate() {
            let customer = format!("{case}-{expect}-{i}");
            if let Some(traits) = traits {
                identify(c, &customer, traits.clone());
            }
            let id = insert(c, &customer, case, json!({}), occurred_at);
            let expected = if expect { vec![fired(case)] } else { vec![] };
            assert_eq!(
                decisions_for(c, id),
                expected,
                "case {case}: {predicate} should {}hold for profile {traits:?}",
                if expect { "" } else { "not " }
            );
        }
    }
    let queued = outbox_for_template(c, Some(case)).len();
    assert_eq!(queued, matching.len(), "case {case}: outbox rows");
}

fn insert(c: &mut Client, customer: &str, name: &str, props: Value, at: Option<&str>) -> i64 {
    match at {
        Some(at) => insert_event_at(c, customer, name, props, at),
        None => insert_event(c, customer, name, props),
    }
}

// ---------------------------------------------------------------------------------------------
// eq, ne, in
// ---------------------------------------------------------------------------------------------

#[test]
fn eq_matches_equal_strings_numbers_booleans_and_objects() {
    let mut c = shared().create_db("pred_eq");
    property_case(
        &mut c,
        "eq_string",
        json!({"property": "plan", "eq": "pro"}),
        None,
        &[json!({"plan": "pro"})],
        &[json!({"plan": "free"}), json!({}), json!({"plan": ["pro"]}), json!({"plan": null})],
    );
    property_case(
        &mut c,
        "eq_number",
        json!({"property": "n", "eq": 1}),
        None,
        &[json!({"n": 1}), json!({"n": 1.0})],
        &[json!({"n": 2}), json!({"n": "1"}), json!({"n": true})],
    );
    property_case(
        &mut c,
        "eq_boolean",
        json!({"property": "vip", "eq": true}),
        None,
        &[json!({"vip": true})],
        &[json!({"vip": false}), json!({"vip": "true"}), json!({})],
    );
    property_case(
        &mut c,
        "eq_object",
        json!({"property": "meta", "eq": {"a": 1, "b": [1, 2]}}),
        None,
        &[json!({"meta": {"b": [1, 2], "a": 1}})],
        &[json!({"meta": {"a": 1}}), json!({"meta": {"a": 1, "b": [2, 1]}})],
    );
}

#[test]
fn ne_matches_missing_or_different_values() {
    let mut c = shared().create_db("pred_ne");
    property_case(
        &mut c,
        "ne_string",
        json!({"property": "plan", "ne": "pro"}),
        None,
        &[json!({"plan": "free"}), json!({}), json!({"plan": null}), json!({"plan": ["pro"]})],
        &[json!({"plan": "pro"})],
    );
    property_case(
        &mut c,
        "ne_number",
        json!({"property": "n", "ne": 1}),
        None,
        &[json!({"n": 2}), json!({"n": "1"})],
        &[json!({"n": 1}), json!({"n": 1.0})],
    );
}

#[test]
fn in_matches_any_listed_value() {
    let mut c = shared().create_db("pred_in");
    property_case(
        &mut c,
        "in_strings",
        json!({"property": "country", "in": ["DE", "AT", "CH"]}),
        None,
        &[json!({"country": "AT"}), json!({"country": "CH"})],
        &[json!({"country": "FR"}), json!({}), json!({"country": ["DE"]}), json!({"country": "de"})],
    );
    property_case(
        &mut c,
        "in_numbers",
        json!({"property": "n", "in": [1, 2]}),
        None,
        &[json!({"n": 2}), json!({"n": 1.0})],
        &[json!({"n": 3}), json!({"n": "2"})],
    );
}

// ---------------------------------------------------------------------------------------------
// lt, lte, gt, gte
// ---------------------------------------------------------------------------------------------

#[test]
fn number_comparisons_respect_their_boundaries() {
    let mut c = shared().create_db("pred_numbers");
    property_case(
        &mut c,
        "gt_100",
        json!({"property": "v", "gt": 100}),
        None,
        &[json!({"v": 100.5}), json!({"v": 101}), json!({"v": 1e9})],
        &[json!({"v": 100}), json!({"v": 99}), json!({"v": "150"}), json!({"v": null}), json!({})],
    );
    property_case(
        &mut c,
        "gte_100",
        json!({"property": "v", "gte": 100}),
        None,
        &[json!({"v": 100}), json!({"v": 100.0}), json!({"v": 250})],
        &[json!({"v": 99.99}), json!({"v": [100]})],
    );
    property_case(
        &mut c,
        "lt_10",
        json!({"property": "v", "lt": 10}),
        None,
        &[json!({"v": 9}), json!({"v": -3}), json!({"v": 9.999})],
        &[json!({"v": 10}), json!({"v": 11}), json!({"v": "5"}), json!({"v": false})],
    );
    property_case(
        &mut c,
        "lte_10",
        json!({"property": "v", "lte": 10}),
        None,
        &[json!({"v": 10}), json!({"v": 9.5})],
        &[json!({"v": 10.01}), json!({})],
    );
    property_case(
        &mut c,
        "gt_fraction",
        json!({"property": "v", "gt": 0.5}),
        None,
        &[json!({"v": 1}), json!({"v": 0.51})],
        &[json!({"v": 0.25}), json!({"v": 0.5})],
    );
}

#[test]
fn timestamp_comparisons_compare_instants_not_strings() {
    let mut c = shared().create_db("pred_timestamps");
    property_case(
        &mut c,
        "lt_ts",
        json!({"property": "at", "lt": "2026-01-01T00:00:00Z"}),
        None,
        &[
            json!({"at": "2025-12-31T23:59:59Z"}),
            // 2025-12-31T23:00:00Z: earlier as an instant although it sorts later as a string.
            json!({"at": "2026-01-01T01:00:00+02:00"}),
        ],
        &[
            json!({"at": "2026-01-01T00:00:01Z"}),
            json!({"at": "2026-01-01T00:00:00Z"}),
            // 2026-01-01T01:00:00Z: later as an instant although it sorts earlier as a string.
            json!({"at": "2025-12-31T23:00:00-02:00"}),
            json!({"at": "not a date"}),
            json!({"at": 12345}),
            json!({}),
        ],
    );
    property_case(
        &mut c,
        "gt_ts",
        json!({"property": "at", "gt": "2026-01-01T00:00:00Z"}),
        None,
        &[
            json!({"at": "2026-06-01T00:00:00Z"}),
            json!({"at": "2026-01-01T00:00:00.5Z"}),
            json!({"at": "2025-12-31T23:00:00-02:00"}),
        ],
        &[
            json!({"at": "2026-01-01T00:00:00Z"}),
            json!({"at": "2025-12-31T23:59:59Z"}),
            json!({"at": "2026-01-01T01:00:00+02:00"}),
            json!({"at": "2027"}),
        ],
    );
    property_case(
        &mut c,
        "gte_ts",
        json!({"property": "at", "gte": "2026-01-01T00:00:00Z"}),
        None,
        &[json!({"at": "2026-01-01T00:00:00Z"}), json!({"at": "2026-01-01T01:00:00+01:00"})],
        &[json!({"at": "2025-12-31T23:59:59Z"})],
    );
    property_case(
        &mut c,
        "lte_ts",
        json!({"property": "at", "lte": "2026-01-01T00:00:00Z"}),
        None,
        &[json!({"at": "2026-01-01T00:00:00Z"}), json!({"at": "2020-01-01T00:00:00Z"})],
        &[json!({"at": "2026-01-01T00:00:00.001Z"})],
    );
}

/// `{"ago": d}` is relative to the event's `occurred_at`, not to now(): the events here occur in
/// 2020, so an implementation using now() gets every case wrong.
#[test]
fn ago_compares_with_event_time_minus_duration() {
    let mut c = shared().create_db("pred_ago");
    let at = Some("2020-06-01T00:00:00Z");
    property_case(
        &mut c,
        "seen_within_30d",
        json!({"property": "last_seen", "gt": {"ago": "30d"}}),
        at,
        &[json!({"last_seen": "2020-05-20T00:00:00Z"}), json!({"last_seen": "2020-05-31T23:00:00-02:00"})],
        &[
            json!({"last_seen": "2020-04-01T00:00:00Z"}),
            json!({"last_seen": "2020-05-01T23:59:59Z"}),
            json!({"last_seen": "yesterday"}),
            json!({}),
        ],
    );
    property_case(
        &mut c,
        "older_than_7d",
        json!({"property": "signed_up_at", "lt": {"ago": "7d"}}),
        at,
        &[json!({"signed_up_at": "2020-05-01T00:00:00Z"})],
        &[json!({"signed_up_at": "2020-05-30T00:00:00Z"}), json!({"signed_up_at": 5})],
    );
    property_case(
        &mut c,
        "gte_combined_duration",
        json!({"property": "at", "gte": {"ago": "1h 30m"}}),
        at,
        // threshold 2020-05-31T22:30:00Z
        &[json!({"at": "2020-05-31T22:30:00Z"}), json!({"at": "2020-05-31T23:00:00Z"})],
        &[json!({"at": "2020-05-31T22:29:59Z"})],
    );
    property_case(
        &mut c,
        "lte_one_week",
        json!({"property": "at", "lte": {"ago": "1w"}}),
        at,
        // threshold 2020-05-25T00:00:00Z
        &[json!({"at": "2020-05-25T00:00:00Z"}), json!({"at": "2019-01-01T00:00:00Z"})],
        &[json!({"at": "2020-05-25T00:00:01Z"})],
    );
}

// ---------------------------------------------------------------------------------------------
// exists, contains
// ---------------------------------------------------------------------------------------------

#[test]
fn exists_true_means_present_and_not_null() {
    let mut c = shared().create_db("pred_exists");
    property_case(
        &mut c,
        "exists_true",
        json!({"property": "coupon", "exists": true}),
        None,
        &[json!({"coupon": "X"}), json!({"coupon": 0}), json!({"coupon": false}), json!({"coupon": ""})],
        &[json!({}), json!({"coupon": null}), json!({"other": "X"})],
    );
    property_case(
        &mut c,
        "exists_false",
        json!({"property": "coupon", "exists": false}),
        None,
        &[json!({}), json!({"coupon": null})],
        &[json!({"coupon": "X"}), json!({"coupon": false})],
    );
    property_case(
        &mut c,
        "exists_nested",
        json!({"property": "a.b", "exists": true}),
        None,
        &[json!({"a": {"b": 1}})],
        &[json!({"a": {"c": 1}}), json!({"a": 1}), json!({"a": {"b": null}})],
    );
}

#[test]
fn contains_matches_substrings_and_array_elements() {
    let mut c = shared().create_db("pred_contains");
    property_case(
        &mut c,
        "contains_substring",
        json!({"property": "title", "contains": "sale"}),
        None,
        &[json!({"title": "summer sale!"}), json!({"title": "sale"})],
        &[json!({"title": "summer"}), json!({}), json!({"title": 5}), json!({"title": {"sale": 1}})],
    );
    property_case(
        &mut c,
        "contains_string_element",
        json!({"property": "items", "contains": "gift-card"}),
        None,
        &[json!({"items": ["a", "gift-card"]}), json!({"items": ["gift-card"]})],
        // array elements compare by equality, not by substring
        &[json!({"items": ["a", "gift-card-x"]}), json!({"items": []}), json!({"items": [["gift-card"]]})],
    );
    property_case(
        &mut c,
        "contains_number_element",
        json!({"property": "codes", "contains": 2}),
        None,
        &[json!({"codes": [1, 2, 3]})],
        &[json!({"codes": [1, 3]}), json!({"codes": 2}), json!({"codes": ["2"]})],
    );
    property_case(
        &mut c,
        "contains_boolean_element",
        json!({"property": "flags", "contains": true}),
        None,
        &[json!({"flags": [false, true]})],
        &[json!({"flags": [false]}), json!({"flags": true})],
    );
}

// ---------------------------------------------------------------------------------------------
// paths
// ---------------------------------------------------------------------------------------------

#[test]
fn property_paths_follow_nested_keys_array_indexes_and_dollar_prefix() {
    let mut c = shared().create_db("pred_paths");
    property_case(
        &mut c,
        "nested_key",
        json!({"property": "cart.value", "gt": 100}),
        None,
        &[json!({"cart": {"value": 180, "items": 3}})],
        &[json!({"cart": {"value": 50}}), json!({"cart": 180}), json!({"value": 180})],
    );
    property_case(
        &mut c,
        "deep_key",
        json!({"property": "a.b.c", "eq": "x"}),
        None,
        &[json!({"a": {"b": {"c": "x"}}})],
        &[json!({"a": {"b": {"c": "y"}}}), json!({"a": {"b": "x"}})],
    );
    property_case(
        &mut c,
        "array_index_0",
        json!({"property": "items.0.sku", "eq": "A-1"}),
        None,
        &[json!({"items": [{"sku": "A-1"}, {"sku": "B-2"}]})],
        &[json!({"items": [{"sku": "B-2"}, {"sku": "A-1"}]}), json!({"items": []}), json!({"items": "A-1"})],
    );
    property_case(
        &mut c,
        "array_index_1",
        json!({"property": "items.1.sku", "eq": "B-2"}),
        None,
        &[json!({"items": [{"sku": "A-1"}, {"sku": "B-2"}]})],
        &[json!({"items": [{"sku": "B-2"}]})],
    );
    property_case(
        &mut c,
        "dollar_prefix",
        json!({"property": "$.address.city", "eq": "Berlin"}),
        None,
        &[json!({"address": {"city": "Berlin"}})],
        &[json!({"address": {"city": "Paris"}}), json!({"city": "Berlin"})],
    );
    property_case(
        &mut c,
        "dollar_prefix_array",
        json!({"property": "$.tags.1", "eq": "b"}),
        None,
        &[json!({"tags": ["a", "b"]})],
        &[json!({"tags": ["b"]}), json!({"tags": ["b", "a"]})],
    );
    property_case(
        &mut c,
        "top_level_key",
        json!({"property": "plan", "eq": "pro"}),
        None,
        &[json!({"plan": "pro", "other": {"plan": "free"}})],
        &[json!({"other": {"plan": "pro"}})],
    );
}

// ---------------------------------------------------------------------------------------------
// profile predicates
// ---------------------------------------------------------------------------------------------

#[test]
fn profile_predicates_read_identify_traits() {
    let mut c = shared().create_db("pred_profile");
    profile_case(
        &mut c,
        "profile_eq",
        json!({"profile": "country", "eq": "DE"}),
        None,
        &[Some(json!({"country": "DE", "plan": "pro"}))],
        &[Some(json!({"country": "FR"})), Some(json!({})), None],
    );
    profile_case(
        &mut c,
        "profile_nested",
        json!({"profile": "address.city", "eq": "Berlin"}),
        None,
        &[Some(json!({"address": {"city": "Berlin", "zip": "10115"}}))],
        &[Some(json!({"address": {"city": "Hamburg"}})), None],
    );
    profile_case(
        &mut c,
        "profile_dollar_index",
        json!({"profile": "$.scores.0", "gte": 10}),
        None,
        &[Some(json!({"scores": [12, 3]})), Some(json!({"scores": [10]}))],
        &[Some(json!({"scores": [3, 12]})), Some(json!({"scores": []}))],
    );
    profile_case(
        &mut c,
        "profile_in",
        json!({"profile": "plan", "in": ["pro", "team"]}),
        None,
        &[Some(json!({"plan": "team"}))],
        &[Some(json!({"plan": "free"})), None],
    );
    profile_case(
        &mut c,
        "profile_contains",
        json!({"profile": "tags", "contains": "beta"}),
        None,
        &[Some(json!({"tags": ["alpha", "beta"]}))],
        &[Some(json!({"tags": ["alpha"]})), None],
    );
    profile_case(
        &mut c,
        "profile_ne",
        json!({"profile": "plan", "ne": "free"}),
        None,
        &[Some(json!({"plan": "pro"})), Some(json!({"country": "DE"})), None],
        &[Some(json!({"plan": "free"}))],
    );
    profile_case(
        &mut c,
        "profile_email_trait",
        json!({"profile": "email", "exists": true}),
        None,
        &[Some(json!({"email": "ada@example.com"}))],
        &[Some(json!({"phone": "+4915112345678"})), None],
    );
}

#[test]
fn profile_ago_uses_event_time() {
    let mut c = shared().create_db("pred_profile_ago");
    profile_case(
        &mut c,
        "new_customer",
        json!({"profile": "signed_up_at", "gt": {"ago": "30d"}}),
        Some("2020-06-01T00:00:00Z"),
        &[Some(json!({"signed_up_at": "2020-05-15T00:00:00Z"}))],
        &[Some(json!({"signed_up_at": "2020-01-15T00:00:00Z"})), None],
    );
}

/// A customer with no profile row has empty attributes: `exists` is false, `ne` is true,
/// everything else is false.
#[test]
fn customer_without_profile_row_has_empty_attributes() {
    let mut c = shared().create_db("pred_no_profile");
    let cases = [
        ("np_ne", json!({"profile": "country", "ne": "DE"}), true),
        ("np_exists_false", json!({"profile": "country", "exists": false}), true),
        ("np_not_eq", json!({"not": {"profile": "country", "eq": "DE"}}), true),
        ("np_exists_true", json!({"profile": "country", "exists": true}), false),
        ("np_eq", json!({"profile": "country", "eq": "DE"}), false),
        ("np_in", json!({"profile": "country", "in": ["DE"]}), false),
        ("np_lt", json!({"profile": "score", "lt": 5}), false),
        ("np_gt_ago", json!({"profile": "signed_up_at", "gt": {"ago": "30d"}}), false),
        ("np_contains", json!({"profile": "tags", "contains": "x"}), false),
    ];
    for (name, predicate, holds) in cases {
        if holds {
            profile_case(&mut c, name, predicate, None, &[None], &[]);
        } else {
            profile_case(&mut c, name, predicate, None, &[], &[None]);
        }
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.profiles"), 0, "no profile rows were created");
}

#[test]
fn profile_changes_apply_to_the_next_event() {
    let mut c = shared().create_db("pred_profile_changes");
    create_trigger(
        &mut c,
        "pro_only",
        json!({"event": "visit", "where": {"profile": "plan", "eq": "pro"}, "action": email("pro")}),
    );
    let e1 = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, e1), vec![], "no profile yet");
    identify(&mut c, "c1", json!({"plan": "pro"}));
    let e2 = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, e2), vec![fired("pro_only")]);
    identify(&mut c, "c1", json!({"plan": "free"}));
    let e3 = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, e3), vec![]);
    // Profiles written directly (not through identify) count as well.
    c.execute("INSERT INTO engage.profiles (customer_id, attributes) VALUES ('c2', '{\"plan\": \"pro\"}')", &[])
        .unwrap();
    let e4 = insert_event(&mut c, "c2", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, e4), vec![fired("pro_only")]);
}

#[test]
fn identify_merges_traits_seen_by_profile_predicates() {
    let mut c = shared().create_db("pred_identify_merge");
    create_trigger(
        &mut c,
        "de_pro",
        json!({"event": "visit",
               "where": {"all": [{"profile": "country", "eq": "DE"}, {"profile": "plan", "eq": "pro"}]},
               "action": email("de_pro")}),
    );
    identify(&mut c, "c1", json!({"country": "DE"}));
    identify(&mut c, "c1", json!({"plan": "pro"}));
    let id = insert_event(&mut c, "c1", "visit", json!({}));
    assert_eq!(decisions_for(&mut c, id), vec![fired("de_pro")]);
}

#[test]
fn one_statement_mixes_property_and_profile_predicates_per_customer() {
    let mut c = shared().create_db("pred_multi_row_profiles");
    create_trigger(
        &mut c,
        "de_big",
        json!({"event": "cart",
               "where": {"all": [{"profile": "country", "eq": "DE"}, {"property": "v", "gt": 10}]},
               "action": email("de_big")}),
    );
    identify(&mut c, "de1", json!({"country": "DE"}));
    identify(&mut c, "fr1", json!({"country": "FR"}));
    identify(&mut c, "de2", json!({"country": "DE"}));
    let ids: Vec<i64> = c
        .query(
            "INSERT INTO engage.events (customer_id, name, properties) VALUES \
             ('de1', 'cart', '{\"v\": 20}'), ('fr1', 'cart', '{\"v\": 20}'), \
             ('de2', 'cart', '{\"v\": 5}'), ('none', 'cart', '{\"v\": 20}') RETURNING id::int8",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(decisions_for(&mut c, ids[0]), vec![fired("de_big")]);
    assert_eq!(decisions_for(&mut c, ids[1]), vec![]);
    assert_eq!(decisions_for(&mut c, ids[2]), vec![]);
    assert_eq!(decisions_for(&mut c, ids[3]), vec![]);
}

// ---------------------------------------------------------------------------------------------
// all, any, not
// ---------------------------------------------------------------------------------------------

#[test]
fn all_any_not_combine_and_nest() {
    let mut c = shared().create_db("pred_combinators");
    property_case(
        &mut c,
        "all_two",
        json!({"all": [{"property": "a", "eq": 1}, {"property": "b", "eq": 2}]}),
        None,
        &[json!({"a": 1, "b": 2})],
        &[json!({"a": 1, "b": 3}), json!({"a": 0, "b": 2}), json!({})],
    );
    property_case(
        &mut c,
        "any_two",
        json!({"any": [{"property": "a", "eq": 1}, {"property": "b", "eq": 2}]}),
        None,
        &[json!({"a": 1}), json!({"b": 2}), json!({"a": 1, "b": 2})],
        &[json!({"a": 0, "b": 0}), json!({})],
    );
    property_case(
        &mut c,
        "not_exists",
        json!({"not": {"property": "coupon", "exists": true}}),
        None,
        &[json!({}), json!({"coupon": null})],
        &[json!({"coupon": "X"})],
    );
    property_case(
        &mut c,
        "not_not",
        json!({"not": {"not": {"property": "a", "eq": 1}}}),
        None,
        &[json!({"a": 1})],
        &[json!({"a": 2})],
    );
    property_case(
        &mut c,
        "single_element_lists",
        json!({"all": [{"any": [{"property": "a", "gt": 0}]}]}),
        None,
        &[json!({"a": 1})],
        &[json!({"a": 0})],
    );
    // (a = 1 AND NOT (b > 5 OR c exists)) OR (d in [x, y] AND e.f contains "z")
    property_case(
        &mut c,
        "deep_nesting",
        json!({"any": [
            {"all": [{"property": "a", "eq": 1},
                     {"not": {"any": [{"property": "b", "gt": 5}, {"property": "c", "exists": true}]}}]},
            {"all": [{"property": "d", "in": ["x", "y"]}, {"property": "e.f", "contains": "z"}]}
        ]}),
        None,
        &[
            json!({"a": 1, "b": 3}),
            json!({"a": 1}),
            json!({"d": "y", "e": {"f": "xyz"}}),
            json!({"a": 1, "b": 9, "d": "x", "e": {"f": ["z"]}}),
        ],
        &[
            json!({"a": 1, "b": 6}),
            json!({"a": 1, "c": 0}),
            json!({"d": "w", "e": {"f": "z"}}),
            json!({"d": "x", "e": {"f": "y"}}),
            json!({}),
        ],
    );
}

#[test]
fn readme_example_combines_property_and_profile_conditions() {
    let mut c = shared().create_db("pred_readme_example");
    create_trigger(
        &mut c,
        "cart_reminder",
        json!({"event": "cart_updated",
               "where": {"all": [{"property": "cart.value", "gt": 100},
                                 {"not": {"property": "coupon", "exists": true}},
                                 {"profile": "country", "in": ["DE", "AT", "CH"]}]},
               "action": {"channel": "email", "template": "cart_reminder"},
               "priority": 10, "cap": {"max": 1, "per": "24h"}}),
    );
    identify(&mut c, "de", json!({"country": "DE"}));
    identify(&mut c, "ch", json!({"country": "CH"}));
    identify(&mut c, "fr", json!({"country": "FR"}));
    identify(&mut c, "at", json!({"country": "AT"}));
    let yes = insert_event(&mut c, "de", "cart_updated", json!({"cart": {"value": 150}}));
    let coupon = insert_event(&mut c, "ch", "cart_updated", json!({"cart": {"value": 150}, "coupon": "X"}));
    let wrong_country = insert_event(&mut c, "fr", "cart_updated", json!({"cart": {"value": 150}}));
    let small = insert_event(&mut c, "at", "cart_updated", json!({"cart": {"value": 50}}));
    let other_event = insert_event(&mut c, "at", "cart_viewed", json!({"cart": {"value": 150}}));
    assert_eq!(decisions_for(&mut c, yes), vec![fired("cart_reminder")]);
    assert_eq!(decisions_for(&mut c, coupon), vec![]);
    assert_eq!(decisions_for(&mut c, wrong_country), vec![]);
    assert_eq!(decisions_for(&mut c, small), vec![]);
    assert_eq!(decisions_for(&mut c, other_event), vec![]);
}

// ---------------------------------------------------------------------------------------------
// event names
// ---------------------------------------------------------------------------------------------

#[test]
fn event_may_be_a_list_of_names_and_other_names_never_match() {
    let mut c = shared().create_db("pred_event_names");
    create_trigger(
        &mut c,
        "orders",
        json!({"event": ["order_completed", "order_shipped"],
               "action": {"channel": "webhook", "payload": {"team": "success"}}}),
    );
    create_trigger(&mut c, "signup", json!({"event": "signed_up", "action": email("welcome")}));
    let a = insert_event(&mut c, "c1", "order_completed", json!({}));
    let b = insert_event(&mut c, "c2", "order_shipped", json!({}));
    let other = insert_event(&mut c, "c3", "order_cancelled", json!({}));
    let signup = insert_event(&mut c, "c5", "signed_up", json!({"anything": 1}));
    assert_eq!(decisions_for(&mut c, a), vec![fired("orders")]);
    assert_eq!(decisions_for(&mut c, b), vec![fired("orders")]);
    assert_eq!(decisions_for(&mut c, other), vec![]);
    assert_eq!(decisions_for(&mut c, signup), vec![fired("signup")]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox WHERE channel::text = 'webhook'"), 2);
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.outbox"), 3);
}
