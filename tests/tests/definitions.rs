//! Bad trigger definitions and trigger-management errors.
//!
//! Every error class of the README's trigger language — unknown field, wrong type, bad duration,
//! unknown operator, empty `all`/`any`, `in` without a non-empty array, missing `event` /
//! `action`, unknown channel, bad path, two operators in one condition, cap max 0, … — is an
//! ERROR with SQLSTATE 22023 whose message names the JSON path, from `engage.validate_trigger`,
//! `engage.create_trigger` (which also names the trigger) and `engage.update_trigger`; a
//! rejected definition stores nothing. Unknown trigger names give 42704, duplicate names 42710.

use pg_engage_it::*;

const INVALID: &str = "22023";

fn valid() -> Value {
    json!({"event": "e", "action": {"channel": "email", "template": "t"}})
}

/// `valid()` with `key` set to `value` (a top-level field).
fn with(key: &str, value: Value) -> Value {
    let mut d = valid();
    d[key] = value;
    d
}

/// `valid()` with `where` set to `predicate`.
fn with_where(predicate: Value) -> Value {
    with("where", predicate)
}

/// True when `message` names `path` as a whole: the path is not just the prefix of a longer
/// path (`$.where` must not be satisfied by `$.where.gt`). Array elements may be written
/// `[1]` or `.1`.
fn names_path(message: &str, path: &str) -> bool {
    let variants = [path.to_string(), path.replace('[', ".").replace(']', "")];
    variants.iter().any(|p| {
        message.match_indices(p.as_str()).any(|(i, _)| match message[i + p.len()..].chars().next() {
            None => true,
            Some(ch) => !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '['),
        })
    })
}

/// Asserts that `definition` is rejected with 22023 naming one of `paths` (and containing every
/// string of `also`) by validate_trigger, create_trigger and update_trigger, and that nothing is
/// stored or changed. Returns the create_trigger error.
#[track_caller]
fn rejects(c: &mut Client, definition: Value, paths: &[&str], also: &[&str]) -> DbError {
    let check = |what: &str, db: &DbError| {
        assert!(
            paths.iter().any(|p| names_path(db.message(), p)),
            "{what}({definition}): the message does not name {paths:?}: {:?}",
            db.message()
        );
        for part in also {
            assert!(
                db.message().contains(part),
                "{what}({definition}): the message does not contain {part:?}: {:?}",
                db.message()
            );
        }
    };

    let validate = c.query_one("SELECT engage.validate_trigger($1)", &[&definition]);
    let db = expect_db_error(validate.map(|r| r.get::<_, Option<bool>>(0)), INVALID, "");
    check("validate_trigger", &db);

    let create = c.query_one("SELECT engage.create_trigger('bad', $1)", &[&definition]);
    let created = expect_db_error(create.map(|r| r.get::<_, Option<i32>>(0)), INVALID, "trigger \"bad\"");
    check("create_trigger", &created);
    assert_eq!(
        count(c, "SELECT count(*) FROM engage.triggers WHERE name = 'bad'"),
        0,
        "a rejected definition must not be stored"
    );

    let update = c.query_one("SELECT engage.update_trigger('good', $1)", &[&definition]);
    let db = expect_db_error(update.map(|r| r.get::<_, Option<i32>>(0)), INVALID, "trigger \"good\"");
    check("update_trigger", &db);
    let row =
        c.query_one("SELECT version::int8, definition::jsonb FROM engage.triggers WHERE name = 'good'", &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "a rejected update must not bump the version");
    assert_eq!(row.get::<_, Value>(1), valid(), "a rejected update must not change the definition");
    created
}

/// A database with one valid trigger `good` (for the update checks).
fn db(name: &str) -> Client {
    let mut c = shared().create_db(name);
    create_trigger(&mut c, "good", valid());
    c
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let mut c = db("def_unknown_field");
    let e = rejects(&mut c, with("colour", json!("red")), &["$.colour"], &["unknown field"]);
    let hint = e.hint().unwrap_or_default();
    for field in ["event", "where", "action", "priority", "cap", "wait", "cancel_on", "holdout", "description"] {
        assert!(hint.contains(field), "hint should list the field {field}: {hint:?}");
    }
    rejects(
        &mut c,
        with("action", json!({"channel": "email", "template": "t", "colour": 1})),
        &["$.action.colour"],
        &[],
    );
    rejects(&mut c, with("cap", json!({"max": 1, "per": "1h", "colour": 1})), &["$.cap.colour"], &[]);
}

#[test]
fn wrong_types_are_rejected_with_their_path() {
    let mut c = db("def_wrong_type");
    let action = |channel: Value, template: Value| json!({"channel": channel, "template": template});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"event": 5, "action": {"channel": "email", "template": "t"}}), "$.event"),
        (json!({"event": [], "action": {"channel": "email", "template": "t"}}), "$.event"),
        (json!({"event": {"name": "e"}, "action": {"channel": "email", "template": "t"}}), "$.event"),
        (json!({"event": ["a", 3], "action": {"channel": "email", "template": "t"}}), "$.event[1]"),
        (with("action", json!("email")), "$.action"),
        (with("action", action(json!(5), json!("t"))), "$.action.channel"),
        (with("action", action(json!("email"), json!(5))), "$.action.template"),
        (with("action", json!({"channel": "email", "template": "t", "payload": [1]})), "$.action.payload"),
        (with("action", json!({"channel": "email", "template": "t", "payload": "x"})), "$.action.payload"),
        (with("priority", json!("high")), "$.priority"),
        (with("priority", json!(1.5)), "$.priority"),
        (with("description", json!(5)), "$.description"),
        (with("where", json!(5)), "$.where"),
        (with("where", json!([{"property": "x", "eq": 1}])), "$.where"),
        (with("cap", json!("2/h")), "$.cap"),
        (with("cap", json!({"max": "2", "per": "1h"})), "$.cap.max"),
        (with("cap", json!({"max": 1.5, "per": "1h"})), "$.cap.max"),
        (with_where(json!({"property": "x", "lt": true})), "$.where.lt"),
        (with_where(json!({"property": "x", "gte": [1]})), "$.where.gte"),
        (with_where(json!({"property": "x", "exists": "yes"})), "$.where.exists"),
        (with_where(json!({"property": "x", "contains": {"a": 1}})), "$.where.contains"),
        (with_where(json!({"property": "x", "contains": [1]})), "$.where.contains"),
        (with_where(json!({"not": [{"property": "x", "eq": 1}]})), "$.where.not"),
        (with_where(json!({"all": {"property": "x", "eq": 1}})), "$.where.all"),
        (with_where(json!({"property": 5, "eq": 1})), "$.where.property"),
        (with_where(json!({"profile": true, "eq": 1})), "$.where.profile"),
    ];
    for (def, path) in cases {
        rejects(&mut c, def, &[path], &[]);
    }
    // The README's own example.
    rejects(&mut c, with_where(json!({"property": "cart.value", "gt": "lots"})), &["$.where.gt"], &["\"lots\""]);
    // The whole definition must be an object.
    rejects(&mut c, json!([valid()]), &["$"], &[]);
    rejects(&mut c, json!("signed_up"), &["$"], &[]);
}

#[test]
fn errors_deep_inside_predicates_name_the_full_path() {
    let mut c = db("def_nested_paths");
    rejects(
        &mut c,
        with_where(json!({"all": [{"property": "x", "eq": 1}, {"property": "y", "gt": "lots"}]})),
        &["$.where.all[1].gt"],
        &[],
    );
    rejects(
        &mut c,
        with_where(json!({"any": [{"not": {"property": "x", "in": "DE"}}]})),
        &["$.where.any[0].not.in"],
        &[],
    );
    rejects(
        &mut c,
        with_where(json!({"all": [{"any": [{"property": "x", "eq": 1}, {"property": "y", "greater": 2}]}]})),
        &["$.where.all[0].any[1]"],
        &["unknown operator \"greater\""],
    );
}

#[test]
fn bad_durations_are_rejected() {
    let mut c = db("def_bad_duration");
    let soon = rejects(&mut c, with("cap", json!({"max": 1, "per": "soon"})), &["$.cap.per"], &["\"soon\""]);
    assert!(soon.message().contains("expected a duration"), "README wording: {:?}", soon.message());
    for per in [
        json!("-2h"),
        json!("0s"),
        json!("0h 0m"),
        json!(""),
        json!("2 fortnights"),
        json!("h"),
        json!("10"),
        json!(5),
        json!(null),
    ] {
        rejects(&mut c, with("cap", json!({"max": 1, "per": per})), &["$.cap.per"], &[]);
    }
    for ago in [json!("soon"), json!("-2h"), json!("0s"), json!(30)] {
        rejects(
            &mut c,
            with_where(json!({"property": "at", "gt": {"ago": ago}})),
            &["$.where.gt.ago", "$.where.gt"],
            &[],
        );
    }
}

#[test]
fn unknown_operators_are_rejected_with_a_hint() {
    let mut c = db("def_unknown_operator");
    let e = rejects(
        &mut c,
        with_where(json!({"property": "cart.value", "greater": 100})),
        &["$.where"],
        &["unknown operator \"greater\""],
    );
    let hint = e.hint().unwrap_or_default();
    assert!(
        hint.contains("eq, ne, in, lt, lte, gt, gte, exists, contains"),
        "hint should list the operators: {hint:?}"
    );
    rejects(&mut c, with_where(json!({"profile": "plan", "EQ": "pro"})), &["$.where"], &["\"EQ\""]);
}

#[test]
fn empty_combinator_lists_are_rejected() {
    let mut c = db("def_empty_lists");
    rejects(&mut c, with_where(json!({"all": []})), &["$.where.all"], &[]);
    rejects(&mut c, with_where(json!({"any": []})), &["$.where.any"], &[]);
    rejects(&mut c, with_where(json!({"not": {"all": []}})), &["$.where.not.all"], &[]);
}

#[test]
fn in_requires_a_non_empty_array() {
    let mut c = db("def_in");
    rejects(&mut c, with_where(json!({"property": "country", "in": "DE"})), &["$.where.in"], &[]);
    rejects(&mut c, with_where(json!({"property": "country", "in": []})), &["$.where.in"], &[]);
    rejects(&mut c, with_where(json!({"property": "country", "in": {"DE": true}})), &["$.where.in"], &[]);
}

#[test]
fn missing_required_fields_are_rejected() {
    let mut c = db("def_missing");
    rejects(&mut c, json!({"action": {"channel": "email", "template": "t"}}), &["$", "$.event"], &["event"]);
    rejects(&mut c, json!({"event": "e"}), &["$", "$.action"], &["action"]);
    rejects(&mut c, json!({}), &["$", "$.event", "$.action"], &[]);
    rejects(&mut c, with("action", json!({"template": "t"})), &["$.action", "$.action.channel"], &["channel"]);
    // template is optional only for webhook
    rejects(&mut c, with("action", json!({"channel": "email"})), &["$.action", "$.action.template"], &["template"]);
    rejects(&mut c, with("cap", json!({"max": 1})), &["$.cap", "$.cap.per"], &["per"]);
    rejects(&mut c, with("cap", json!({"per": "1h"})), &["$.cap", "$.cap.max"], &["max"]);
    // and the webhook without a template is fine
    let ok: bool = c
        .query_one("SELECT engage.validate_trigger($1)", &[&with("action", json!({"channel": "webhook"}))])
        .unwrap()
        .get(0);
    assert!(ok);
}

#[test]
fn unknown_channels_are_rejected() {
    let mut c = db("def_channel");
    rejects(
        &mut c,
        with("action", json!({"channel": "carrier-pigeon", "template": "t"})),
        &["$.action.channel"],
        &["carrier-pigeon"],
    );
    rejects(&mut c, with("action", json!({"channel": "Email", "template": "t"})), &["$.action.channel"], &[]);
    rejects(&mut c, with("action", json!({"channel": "", "template": "t"})), &["$.action.channel"], &[]);
}

#[test]
fn bad_paths_are_rejected() {
    let mut c = db("def_bad_path");
    for path in ["", "a..b", "cart.", ".cart", "$."] {
        rejects(&mut c, with_where(json!({"property": path, "eq": 1})), &["$.where.property"], &[]);
    }
    rejects(&mut c, with_where(json!({"profile": "", "eq": 1})), &["$.where.profile"], &[]);
}

#[test]
fn a_condition_needs_exactly_one_subject_and_one_operator() {
    let mut c = db("def_condition_shape");
    // two operators
    rejects(&mut c, with_where(json!({"property": "x", "gt": 1, "lt": 5})), &["$.where"], &[]);
    // no operator
    rejects(&mut c, with_where(json!({"property": "x"})), &["$.where"], &[]);
    // no subject
    rejects(&mut c, with_where(json!({"eq": 1})), &["$.where"], &[]);
    // two subjects
    rejects(&mut c, with_where(json!({"property": "x", "profile": "y", "eq": 1})), &["$.where"], &[]);
    // two combinators in one object
    rejects(
        &mut c,
        with_where(json!({"all": [{"property": "x", "eq": 1}], "any": [{"property": "y", "eq": 1}]})),
        &["$.where"],
        &[],
    );
    // empty predicate
    rejects(&mut c, with_where(json!({})), &["$.where"], &[]);
}

#[test]
fn cap_max_must_be_positive() {
    let mut c = db("def_cap_max");
    rejects(&mut c, with("cap", json!({"max": 0, "per": "1h"})), &["$.cap.max"], &[]);
    rejects(&mut c, with("cap", json!({"max": -1, "per": "1h"})), &["$.cap.max"], &[]);
}

// ---------------------------------------------------------------------------------------------
// names
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_trigger_names_give_undefined_object() {
    let mut c = db("def_unknown_name");
    let def = valid();
    assert_sql_error(&mut c, "SELECT engage.update_trigger('nope', $1)", &[&def], "42704", "nope");
    assert_sql_error(&mut c, "SELECT engage.enable_trigger('nope')", &[], "42704", "nope");
    assert_sql_error(&mut c, "SELECT engage.disable_trigger('nope')", &[], "42704", "nope");
    assert_sql_error(&mut c, "SELECT engage.drop_trigger('nope')", &[], "42704", "nope");
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers"), 1);
}

#[test]
fn dropped_trigger_name_is_unknown_afterwards() {
    let mut c = db("def_dropped_name");
    c.execute("SELECT engage.drop_trigger('good')", &[]).unwrap();
    assert_sql_error(&mut c, "SELECT engage.drop_trigger('good')", &[], "42704", "good");
    assert_sql_error(&mut c, "SELECT engage.enable_trigger('good')", &[], "42704", "good");
}

#[test]
fn duplicate_trigger_name_gives_duplicate_object_and_keeps_the_original() {
    let mut c = db("def_duplicate");
    let other = json!({"event": "other", "action": {"channel": "sms", "template": "x"}});
    assert_sql_error(&mut c, "SELECT engage.create_trigger('good', $1)", &[&other], "42710", "good");
    let row =
        c.query_one("SELECT count(*) OVER (), version::int8, definition::jsonb FROM engage.triggers", &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), 1);
    assert_eq!(row.get::<_, Value>(2), valid());
}

#[test]
fn rejected_update_keeps_the_old_rule_in_force() {
    let mut c = db("def_rejected_update_in_force");
    let before = insert_event(&mut c, "c1", "e", json!({}));
    assert_eq!(decisions_for(&mut c, before), vec![fired("good")]);
    let bad = with("cap", json!({"max": 1, "per": "soon"}));
    let r = c.query_one("SELECT engage.update_trigger('good', $1)", &[&bad]);
    expect_db_error(r.map(|r| r.get::<_, Option<i32>>(0)), INVALID, "$.cap.per");
    let after = insert_event(&mut c, "c2", "e", json!({}));
    assert_eq!(decisions_for(&mut c, after), vec![fired("good")]);
}

#[test]
fn valid_definitions_validate_true() {
    let mut c = db("def_valid");
    for def in [
        valid(),
        json!({"event": ["a", "b"], "where": {"not": {"property": "$.x.0", "in": [1, "a", null]}},
               "action": {"channel": "push", "template": "t", "payload": {"k": [1, 2]}},
               "priority": 100, "cap": {"max": 5, "per": "2h"}, "description": "d"}),
        json!({"event": "e", "where": {"property": "at", "lt": "2026-01-01T00:00:00Z"},
               "action": {"channel": "whatsapp", "template": "t"}}),
        json!({"event": "e", "where": {"profile": "at", "gte": {"ago": "1w"}},
               "action": {"channel": "sms", "template": "t"}}),
        json!({"event": "e", "where": {"property": "x", "eq": {"nested": [1, {"a": null}]}},
               "action": {"channel": "email", "template": "t"}}),
        json!({"event": "e", "where": {"property": "tags", "contains": 3},
               "action": {"channel": "email", "template": "t"}}),
        json!({"event": "e", "where": {"property": "flag", "exists": false},
               "action": {"channel": "email", "template": "t"}}),
    ] {
        let ok: bool = c
            .query_one("SELECT engage.validate_trigger($1)", &[&def])
            .unwrap_or_else(|e| panic!("{def} rejected: {}", error_text(&e)))
            .get(0);
        assert!(ok, "{def}");
    }
    // validate_trigger stores nothing.
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers"), 1);
}

/// `rejects` for a definition given as JSON text (for what serde_json cannot hold, like 1e400):
/// 22023 naming one of `paths` from validate_trigger, create_trigger and update_trigger.
#[track_caller]
fn rejects_text(c: &mut Client, definition: &str, paths: &[&str]) {
    for (what, sql) in [
        ("validate_trigger", "SELECT engage.validate_trigger($1::text::jsonb)::text"),
        ("create_trigger", "SELECT engage.create_trigger('bad', $1::text::jsonb)::text"),
        ("update_trigger", "SELECT engage.update_trigger('good', $1::text::jsonb)::text"),
    ] {
        let result = c.query_one(sql, &[&definition]).map(|r| r.get::<_, Option<String>>(0));
        let db = expect_db_error(result, INVALID, "");
        assert!(
            paths.iter().any(|p| names_path(db.message(), p)),
            "{what}: the message does not name {paths:?}: {:?}",
            db.message()
        );
    }
    assert_eq!(count(c, "SELECT count(*) FROM engage.triggers WHERE name = 'bad'"), 0);
    assert_eq!(count(c, "SELECT count(*) FROM engage.triggers WHERE name = 'good' AND version = 1"), 1);
}

#[test]
fn durations_longer_than_ten_years_are_rejected() {
    let mut c = db("def_long_duration");
    for wait in ["106751990d", "99999999d", "3651d"] {
        let db = rejects(&mut c, with("wait", json!(wait)), &["$.wait"], &["longer than 3650d"]);
        assert!(db.hint().is_some_and(|h| h.contains("3650d")), "{:?}", db.hint());
    }
    let db = rejects(&mut c, with("cap", json!({"max": 1, "per": "99999999d"})), &["$.cap.per"], &[]);
    assert!(db.message().contains("3650d"), "{}", db.message());
    create_trigger(&mut c, "ten_years", with("wait", json!("3650d")));
}

#[test]
fn numbers_beyond_double_range_are_rejected_at_their_path() {
    let mut c = db("def_huge_numbers");
    rejects_text(
        &mut c,
        r#"{"event": "e", "action": {"channel": "webhook", "payload": {"limit": 1e400}}}"#,
        &["$.action.payload.limit"],
    );
    rejects_text(
        &mut c,
        r#"{"event": "e", "where": {"property": "amount", "gt": -1e400}, "action": {"channel": "webhook"}}"#,
        &["$.where.gt"],
    );
    rejects_text(
        &mut c,
        r#"{"event": "e", "where": {"all": [{"property": "a", "eq": 1}, {"property": "b", "in": [1, 1e400]}]}, "action": {"channel": "webhook"}}"#,
        &["$.where.all[1].in[1]"],
    );
}

#[test]
fn definitions_too_deep_or_too_large_are_rejected() {
    let mut c = db("def_bounds");
    // A `where` nested 200 deep (not of not of ...), and one nested 40 deep.
    for depth in [200, 40] {
        let mut predicate = json!({"property": "x", "eq": 1});
        for _ in 0..depth {
            predicate = json!({"not": predicate});
        }
        let text = with_where(predicate).to_string();
        let result = c.query_one("SELECT engage.create_trigger('bad', $1::text::jsonb)", &[&text]);
        let db = expect_db_error(result.map(|r| r.get::<_, i32>(0)), INVALID, "nested deeper than");
        assert!(db.message().contains("at $.where.not.not.not"), "depth {depth}: {}", db.message());
    }
    // 10,000 event names.
    let names: Vec<String> = (0..10_000).map(|i| format!("e{i}")).collect();
    let db = rejects(&mut c, with("event", json!(names)), &["$.event", "$"], &[]);
    assert!(db.message().contains("at most"), "{}", db.message());
    let names: Vec<String> = (0..101).map(|i| format!("e{i}")).collect();
    rejects(&mut c, with("event", json!(names)), &["$.event"], &["at most 100 event names"]);
    // 100,000 `any` conditions.
    let any: Vec<Value> = (0..100_000).map(|i| json!({"property": "x", "eq": i})).collect();
    rejects(&mut c, with_where(json!({"any": any})), &["$"], &["at most 10000 JSON values"]);
    // Within the limits: 100 names and a where of 1,000 conditions.
    let names: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let any: Vec<Value> = (0..1_000).map(|i| json!({"property": "x", "eq": i})).collect();
    let mut fine = with("event", json!(names));
    fine["where"] = json!({"any": any});
    create_trigger(&mut c, "large_but_fine", fine);
}

#[test]
fn null_arguments_are_errors() {
    let mut c = db("def_nulls");
    let code = "22004";
    for sql in [
        "SELECT engage.create_trigger(NULL, '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT engage.create_trigger('n', NULL)",
        "SELECT engage.update_trigger(NULL, '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT engage.update_trigger('good', NULL)",
    ] {
        let db = expect_db_error(c.query_one(sql, &[]).map(|r| r.get::<_, Option<i32>>(0)), code, "must not be NULL");
        assert!(db.message().contains("name") || db.message().contains("definition"), "{sql}: {}", db.message());
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM engage.triggers"), 1);
}

#[test]
fn long_names_are_quoted_as_excerpts() {
    let mut c = db("def_long_names");
    let long = "n".repeat(100_000);
    for sql in [
        "SELECT engage.create_trigger($1, '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT engage.update_trigger($1, '{\"event\": \"e\", \"action\": {\"channel\": \"webhook\"}}')",
        "SELECT engage.drop_trigger($1)::text",
    ] {
        let err = c.query_one(sql, &[&long]).map(|_| ()).unwrap_err();
        let message = err.as_db_error().expect("a server error").message().to_string();
        assert!(message.len() < 300, "{sql}: a {}-byte message", message.len());
        assert!(message.contains("nnnn..."), "{sql}: {message}");
    }
}

/// SQL reads a definition only through its compiled form (`engage.triggers.compiled`, generated
/// by `engage.compiled_trigger` from the Rust parser, every default filled in): no function, view,
/// trigger condition or column default of the extension applies a JSON operator to a definition.
#[test]
fn sql_reads_definitions_only_in_their_compiled_form() {
    let mut c = shared().create_db("definitions_compiled");
    let readers: Vec<String> = c
        .query(
            r"SELECT x.what FROM (
                SELECT 'function ' || p.oid::regprocedure::text AS what, p.prosrc AS body
                  FROM pg_proc p WHERE p.pronamespace = 'engage'::regnamespace
                UNION ALL
                SELECT 'view ' || v.oid::regclass::text, pg_get_viewdef(v.oid)
                  FROM pg_class v WHERE v.relnamespace = 'engage'::regnamespace AND v.relkind IN ('v', 'm')
                UNION ALL
                SELECT 'trigger ' || t.tgname, pg_get_triggerdef(t.oid)
                  FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
                 WHERE r.relnamespace = 'engage'::regnamespace AND NOT t.tgisinternal
                UNION ALL
                SELECT 'column ' || d.adrelid::regclass::text || '.' || d.adnum, pg_get_expr(d.adbin, d.adrelid)
                  FROM pg_attrdef d JOIN pg_class r ON r.oid = d.adrelid
                 WHERE r.relnamespace = 'engage'::regnamespace
              ) x
             WHERE x.body ~ 'definition\s*(->|#>|\?|@>)'
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(readers.is_empty(), "SQL reading definitions directly: {readers:?}");

    // The compiled form: the language's defaults filled in, recomputed by update_trigger.
    create_trigger(
        &mut c,
        "bday",
        json!({"anniversary": {"date": "profile.birthday"}, "action": {"channel": "email", "template": "birthday"}}),
    );
    let compiled = |c: &mut Client| -> (Value, i32) {
        let row = c.query_one("SELECT compiled, priority FROM engage.triggers WHERE name = 'bday'", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    let (form, priority) = compiled(&mut c);
    assert_eq!(form["event_name"], "trigger:bday");
    assert_eq!(
        form["occasion"],
        json!({"kind": "anniversary", "date": ["profile", "birthday"], "at": "09:00:00", "offset_micros": 0, "yearly": true})
    );
    assert_eq!(priority, 0);
    update_trigger(
        &mut c,
        "bday",
        json!({"anniversary": {"date": "birthday", "at": "18:00"}, "priority": 4, "action": {"channel": "email", "template": "birthday"}}),
    );
    let (form, priority) = compiled(&mut c);
    assert_eq!(
        (form["occasion"]["at"].clone(), form["occasion"]["date"].clone()),
        (json!("18:00:00"), json!(["birthday"]))
    );
    assert_eq!((priority, form["priority"].clone()), (4, json!(4)));
}
