//! The PostgreSQL errors pg_engage raises: a real SQLSTATE, a message naming the thing, and a
//! DETAIL or HINT where they help. Every user-facing failure goes through here, never a panic.

use crate::rule::error::excerpt;
use crate::rule::DefinitionError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

fn raise(report: ErrorReport) -> ! {
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

/// `22023 invalid_parameter_value`: a trigger definition that does not validate.
pub fn invalid_definition(trigger: Option<&str>, error: &DefinitionError) -> ! {
    let message = match trigger {
        Some(name) => format!("trigger \"{}\": {error}", excerpt(name)),
        None => format!("invalid trigger definition: {error}"),
    };
    let mut report = ErrorReport::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message, "pg_engage")
        .set_detail(format!("The trigger definition is invalid at JSON path {}.", error.path));
    if let Some(hint) = &error.hint {
        report = report.set_hint(hint.clone());
    }
    raise(report)
}

/// `22023 invalid_parameter_value` for a bad argument other than a definition.
pub fn invalid_argument(message: String, hint: &str) -> ! {
    raise(ErrorReport::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message, "pg_engage").set_hint(hint))
}

/// `22004 null_value_not_allowed`: a NULL argument where a value is required.
pub fn null_argument(argument: &str) -> ! {
    raise(ErrorReport::new(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{argument} must not be NULL"),
        "pg_engage",
    ))
}

/// `42704 undefined_object`: no trigger of that name.
pub fn undefined_trigger(name: &str) -> ! {
    raise(
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("trigger \"{}\" does not exist", excerpt(name)),
            "pg_engage",
        )
        .set_hint("SELECT name FROM engage.triggers lists the defined triggers."),
    )
}

/// `42710 duplicate_object`: a trigger of that name exists already.
pub fn duplicate_trigger(name: &str) -> ! {
    raise(
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("trigger \"{}\" already exists", excerpt(name)),
            "pg_engage",
        )
        .set_hint("Use engage.update_trigger to change its definition."),
    )
}

/// `55000 object_not_in_prerequisite_state`: one of pg_engage's tables no longer has the columns
/// the insert path writes (someone altered it).
pub fn altered_table(table: &str, problem: String) -> ! {
    raise(
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("engage.{table} {problem}"),
            "pg_engage",
        )
        .set_detail("The insert path writes every column of this table itself.")
        .set_hint("Undo the change to the table; its columns change only with pg_engage's own upgrades."),
    )
}

/// `XX000 internal_error`: something pg_engage itself did not expect (a bug, or a damaged schema).
pub fn internal(message: &str) -> ! {
    raise(ErrorReport::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pg_engage: {message}"), "pg_engage"))
}
