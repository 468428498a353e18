//! The insert path's SQL: three statements, each prepared once per backend and run at most once
//! per evaluated statement, with arrays as parameters (set-based, no per-row planning).

use crate::sql_error;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::OnceCell;

const PROFILES: &str = "\
SELECT customer_id, attributes::text FROM engage.profiles WHERE customer_id = ANY($1)";

/// For each capped candidate, the fired decisions of its trigger and customer in its window.
const CAP_COUNTS: &str = "\
SELECT (SELECT count(*) FROM engage.decisions d
         WHERE d.customer_id = c.customer_id AND d.trigger_id = c.trigger_id
           AND d.outcome = 'fired' AND d.occurred_at > c.since AND d.occurred_at <= c.until)
  FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::timestamptz[])
       WITH ORDINALITY AS c(customer_id, trigger_id, since, until, ord)
 ORDER BY c.ord";

/// All decisions and all outbox rows of a statement, in one statement.
const WRITE: &str = "\
WITH decided AS (
  INSERT INTO engage.decisions (event_id, trigger_id, trigger_version, customer_id, occurred_at, outcome, reason)
  SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::timestamptz[], $6::text[], $7::text[])
)
INSERT INTO engage.outbox (event_id, trigger_id, customer_id, channel, template, payload, due_at)
SELECT u.event_id, u.trigger_id, u.customer_id, u.channel, u.template, u.payload::jsonb, u.due_at
  FROM unnest($8::int8[], $9::int4[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[])
       AS u(event_id, trigger_id, customer_id, channel, template, payload, due_at)";

struct Plans {
    profiles: OwnedPreparedStatement,
    cap_counts: OwnedPreparedStatement,
    write: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: OnceCell<Plans> = const { OnceCell::new() };
}

fn with_plans<R>(f: impl FnOnce(&Plans) -> R) -> R {
    PLANS.with(|cell| {
        let plans = cell.get_or_init(|| {
            use pg_sys::PgBuiltInOids as T;
            let oid = |t: T| PgOid::BuiltIn(t);
            Spi::connect(|client| -> Result<Plans, pgrx::spi::Error> {
                Ok(Plans {
                    profiles: client.prepare(PROFILES, &[oid(T::TEXTARRAYOID)])?.keep(),
                    cap_counts: client
                        .prepare(CAP_COUNTS, &[oid(T::TEXTARRAYOID), oid(T::INT4ARRAYOID), oid(T::TIMESTAMPTZARRAYOID), oid(T::TIMESTAMPTZARRAYOID)])?
                        .keep(),
                    write: client
                        .prepare_mut(
                            WRITE,
                            &[
                                oid(T::INT8ARRAYOID),
                                oid(T::INT4ARRAYOID),
                                oid(T::INT4ARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TIMESTAMPTZARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::INT8ARRAYOID),
                                oid(T::INT4ARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TEXTARRAYOID),
                                oid(T::TIMESTAMPTZARRAYOID),
                            ],
                        )?
                        .keep(),
                })
            })
            .unwrap_or_else(|e| sql_error::internal(&format!("could not prepare the insert-path statements: {e}")))
        });
        f(plans)
    })
}

/// A PostgreSQL timestamp (microseconds since 2000-01-01) as a timestamptz value.
pub fn timestamptz(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros).unwrap_or_else(|_| sql_error::internal(&format!("timestamp {micros} out of range")))
}

/// Profile attributes of the given customers, as `(customer_id, attributes)`.
pub fn profiles(customer_ids: Vec<&str>) -> Vec<(String, serde_json::Value)> {
    with_plans(|plans| {
        Spi::connect(|client| {
            let args: [DatumWithOid; 1] = [customer_ids.into()];
            client
                .select(&plans.profiles, None, &args)?
                .map(|row| {
                    let id: String = row.get(1)?.unwrap_or_default();
                    let text: String = row.get(2)?.unwrap_or_default();
                    Ok((id, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not read profiles: {e}")))
}

/// Fired-decision counts for `(customer_id, trigger_id, since, until)` windows, in order.
pub fn cap_counts(customer_ids: Vec<&str>, trigger_ids: Vec<i32>, since: Vec<TimestampWithTimeZone>, until: Vec<TimestampWithTimeZone>) -> Vec<i64> {
    with_plans(|plans| {
        Spi::connect(|client| {
            let args: [DatumWithOid; 4] = [customer_ids.into(), trigger_ids.into(), since.into(), until.into()];
            client
                .select(&plans.cap_counts, None, &args)?
                .map(|row| Ok(row.get::<i64>(1)?.unwrap_or(0)))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not count capped decisions: {e}")))
}

/// Column arrays for `engage.decisions`.
#[derive(Default)]
pub struct Decisions<'a> {
    pub event_id: Vec<i64>,
    pub trigger_id: Vec<i32>,
    pub trigger_version: Vec<i32>,
    pub customer_id: Vec<&'a str>,
    pub occurred_at: Vec<TimestampWithTimeZone>,
    pub outcome: Vec<&'static str>,
    pub reason: Vec<Option<&'static str>>,
}

/// Column arrays for `engage.outbox`.
#[derive(Default)]
pub struct Outbox<'a> {
    pub event_id: Vec<i64>,
    pub trigger_id: Vec<i32>,
    pub customer_id: Vec<&'a str>,
    pub channel: Vec<&'static str>,
    pub template: Vec<Option<&'a str>>,
    pub payload: Vec<&'a str>,
    pub due_at: Vec<TimestampWithTimeZone>,
}

/// Writes the statement's decisions and outbox rows.
pub fn write(d: Decisions, o: Outbox) {
    with_plans(|plans| {
        Spi::connect_mut(|client| {
            let args: [DatumWithOid; 14] = [
                d.event_id.into(),
                d.trigger_id.into(),
                d.trigger_version.into(),
                d.customer_id.into(),
                d.occurred_at.into(),
                d.outcome.into(),
                d.reason.into(),
                o.event_id.into(),
                o.trigger_id.into(),
                o.customer_id.into(),
                o.channel.into(),
                o.template.into(),
                o.payload.into(),
                o.due_at.into(),
            ];
            client.update(&plans.write, None, &args).map(|_| ())
        })
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not write decisions: {e}")))
}
