//! Managing trigger definitions: create, update, enable, disable, drop, validate.
//!
//! Each function validates first, so a bad definition is an ERROR naming the trigger and the JSON
//! path, and nothing is stored. Writes to engage.triggers fire `rules_changed`, which makes every
//! backend recompile its rules before its next evaluated statement.

use crate::jsonb;
use crate::rule;
use crate::sql_error;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

fn checked_name(name: Option<&str>) -> &str {
    let Some(name) = name else { sql_error::null_argument("name") };
    let valid = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        sql_error::invalid_argument(
            format!("invalid trigger name \"{}\"", rule::error::excerpt(name)),
            "A trigger name is 1 to 100 characters: letters, digits, '_', '-' or '.'.",
        );
    }
    name
}

/// The definition argument, validated: an ERROR naming the trigger, the JSON path and the problem
/// for a NULL, an unreadable value (a number beyond double range, nesting beyond 64 levels) or a
/// definition the language refuses. Returns the argument, to store as given.
fn checked_definition<'a, 'f>(name: Option<&str>, definition: &'a Option<jsonb::Strict<'f>>) -> &'a jsonb::Strict<'f> {
    let Some(definition) = definition else { sql_error::null_argument("definition") };
    parsed_definition(name, definition);
    definition
}

/// A definition, parsed, with the errors of `checked_definition`.
fn parsed_definition(name: Option<&str>, definition: &jsonb::Strict) -> rule::Definition {
    match &definition.value {
        Err(unreadable) => sql_error::invalid_definition(
            name,
            &rule::DefinitionError::new(&unreadable.path, unreadable.problem.clone()),
        ),
        Ok(value) => rule::parse(value).unwrap_or_else(|e| sql_error::invalid_definition(name, &e)),
    }
}

/// Runs a statement returning at most one int4, raising `undefined_trigger` when it returns none.
fn one_int(query: &str, args: &[DatumWithOid]) -> Option<i32> {
    Spi::connect_mut(|client| {
        let rows = client.update(query, None, args)?;
        if rows.is_empty() {
            Ok(None)
        } else {
            rows.first().get_one::<i32>()
        }
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("{e}")))
}

/// The compiled form of a trigger (`rule::compiled`): what SQL reads of it, every default filled
/// in. `engage.triggers.compiled` and `priority` are generated with it.
#[pg_extern(immutable, parallel_safe)]
fn compiled_trigger(name: &str, definition: jsonb::Strict) -> pgrx::JsonB {
    pgrx::JsonB(rule::compiled::compile(name, &parsed_definition(Some(name), &definition)))
}

/// Validates a trigger definition: returns true, or raises an ERROR naming the JSON path and the
/// problem. engage.trigger_definition uses it as its CHECK.
#[pg_extern(immutable, parallel_safe)]
fn validate_trigger(definition: jsonb::Strict) -> bool {
    checked_definition(None, &Some(definition));
    true
}

/// `engage.duration(text)` of 0.1.0, which read durations out of definitions in SQL (0.2.0 reads
/// them compiled, see `compiled_trigger`, and drops the SQL function). Its symbol stays in the
/// library for 0.1.0 databases until `ALTER EXTENSION pg_engage UPDATE` (and for installing
/// 0.1.0 at all): no SQL is generated for it.
#[pg_extern(sql = false, immutable, parallel_safe, strict)]
fn duration(text: &str) -> Interval {
    let value = serde_json::Value::String(text.to_string());
    match rule::duration::parse(&value, "duration") {
        Ok(micros) => Interval::from_micros(micros),
        Err(e) => sql_error::invalid_argument(
            format!("invalid duration \"{text}\": {}", e.problem),
            e.hint.as_deref().unwrap_or("durations look like \"30m\", \"2h\" or \"7d\""),
        ),
    }
}

/// Creates a trigger from a JSON definition and returns its id.
#[pg_extern(volatile)]
fn create_trigger(name: Option<&str>, definition: Option<jsonb::Strict>) -> i32 {
    let name = checked_name(name);
    let definition = checked_definition(Some(name), &definition);
    one_int(
        "INSERT INTO engage.triggers (name, definition) VALUES ($1, $2::jsonb) ON CONFLICT (name) DO NOTHING RETURNING id",
        &[name.into(), definition.datum()],
    )
    .unwrap_or_else(|| sql_error::duplicate_trigger(name))
}

/// Replaces a trigger's definition and returns its new version number.
#[pg_extern(volatile)]
fn update_trigger(name: Option<&str>, definition: Option<jsonb::Strict>) -> i32 {
    let Some(name) = name else { sql_error::null_argument("name") };
    let definition = checked_definition(Some(name), &definition);
    one_int(
        "UPDATE engage.triggers SET definition = $2::jsonb, version = version + 1, updated_at = now() WHERE name = $1 RETURNING version",
        &[name.into(), definition.datum()],
    )
    .unwrap_or_else(|| sql_error::undefined_trigger(name))
}

fn set_enabled(name: &str, enabled: bool) {
    one_int(
        "UPDATE engage.triggers SET enabled = $2, updated_at = now() WHERE name = $1 RETURNING id",
        &[name.into(), enabled.into()],
    )
    .unwrap_or_else(|| sql_error::undefined_trigger(name));
}

/// Enables a trigger: from the next statement on, its events are evaluated again.
#[pg_extern(volatile)]
fn enable_trigger(name: &str) {
    set_enabled(name, true)
}

/// Disables a trigger: it stays defined but fires nothing.
#[pg_extern(volatile)]
fn disable_trigger(name: &str) {
    set_enabled(name, false)
}

/// Drops a trigger. Its past decisions and queued messages stay.
#[pg_extern(volatile)]
fn drop_trigger(name: &str) {
    one_int("DELETE FROM engage.triggers WHERE name = $1 RETURNING id", &[name.into()])
        .unwrap_or_else(|| sql_error::undefined_trigger(name));
}

/// In-database tests of definition errors (`cargo pgrx test`).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::run;
    use pgrx::prelude::*;

    #[pg_test(
        error = "trigger \"bad\": at $.cap.per: expected a duration like \"30m\", \"2h\" or \"7d\", got \"soon\""
    )]
    fn a_bad_duration_is_an_error_naming_its_path() {
        run(
            r#"SELECT engage.create_trigger('bad', '{"event": "x", "action": {"channel": "email", "template": "t"}, "cap": {"max": 1, "per": "soon"}}')"#,
        );
    }

    #[pg_test(error = "invalid trigger definition: at $.where: unknown operator \"greater\"")]
    fn a_direct_insert_of_a_bad_definition_is_rejected_by_the_domain() {
        run(
            r#"INSERT INTO engage.triggers (name, definition) VALUES ('bad', '{"event": "x", "where": {"property": "a", "greater": 1}, "action": {"channel": "webhook"}}')"#,
        );
    }

    #[pg_test(error = "trigger \"nope\" does not exist")]
    fn dropping_an_unknown_trigger_is_an_error() {
        run("SELECT engage.drop_trigger('nope')");
    }
}
