//! The insert path's SQL: statements prepared once per backend and run at most once per evaluated
//! statement, with arrays as parameters (set-based, no per-row planning).

use crate::sql_error;
use pgrx::prelude::*;
use std::cell::OnceCell;

/// Locks the messages a better candidate is about to withdraw, so no deliverer claims them
/// meanwhile (claim skips locked rows), in the order given (ascending ids, so that two statements
/// cannot deadlock); returns the ids that were still pending. Each is looked up
/// by its key alone (the only plan, kept for every call) and its status read once locked: with
/// `status = 'pending'` beside `id = ANY`, statistics taken when nothing was pending made the
/// planner AND the key look-ups with a scan of every pending message (outbox_open_due), 5 ms for
/// 150 messages among 150,000 pending.
const LOCK_PENDING: &str = "\
SELECT o.id
  FROM unnest($1::int8[]) AS m(id)
 CROSS JOIN LATERAL (SELECT x.id, x.status FROM engage.outbox x WHERE x.id = m.id OFFSET 0 FOR UPDATE) AS o
 WHERE o.status = 'pending'";

/// Turns replaced decisions into conflicts and withdraws their messages: every pending step of
/// the rival (an escalation already queued stands), found by the history read and locked by
/// LOCK_PENDING in this transaction, so they are still pending. Each row is found by its key
/// alone, then updated by its row address: with look-ups per array element the plan kept for
/// every call stays a look-up per element however the tables grow, where a join planned while a
/// table was nearly empty hashed a sequential scan of it until the next ANALYZE replanned it.
const REPLACE: &str = "\
WITH replaced AS (
  UPDATE engage.decisions d SET outcome = 'suppressed', reason = 'conflict'
    FROM (SELECT x.ctid
            FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::int8[]) AS r(customer_id, occurred_at, trigger_id, event_id)
           CROSS JOIN LATERAL (SELECT y.ctid FROM engage.decisions y
                                WHERE y.customer_id = r.customer_id COLLATE \"C\" AND y.occurred_at = r.occurred_at
                                  AND y.trigger_id = r.trigger_id AND y.event_id = r.event_id
                               OFFSET 0) AS x) AS r
   WHERE d.ctid = r.ctid
)
UPDATE engage.outbox o
   SET status = 'suppressed', reason = 'conflict', last_error = m.detail
  FROM (SELECT x.ctid, m.detail
          FROM unnest($5::int8[], $6::text[]) AS m(id, detail)
         CROSS JOIN LATERAL (SELECT y.ctid FROM engage.outbox y WHERE y.id = m.id OFFSET 0) AS x) AS m
 WHERE o.ctid = m.ctid";

/// Cancels pending messages whose cancel_on matches one of the statement's events: same customer,
/// the event's name, its properties containing the triggering event's `same` values, and an
/// event time between the triggering event and the message's due time. The messages found are
/// locked in id order and their status read then, as in LOCK_PENDING, and updated by key.
const CANCEL: &str = "\
WITH hit AS MATERIALIZED (
  SELECT m.id, c.event_id, c.name
    FROM unnest($1::int8[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
         AS c(event_id, customer_id, name, occurred_at, properties)
    CROSS JOIN LATERAL (
          SELECT x.id FROM engage.outbox x
           WHERE x.customer_id = c.customer_id COLLATE \"C\"
             AND x.status = 'pending'
             AND x.cancel_on IS NOT NULL
             AND x.scheduled_at > c.occurred_at
             AND EXISTS (SELECT 1 FROM jsonb_array_elements(x.cancel_on) AS y
                          WHERE y ->> 'event' = c.name AND c.properties::jsonb @> (y -> 'same'))
             AND c.occurred_at >= (SELECT e.occurred_at FROM engage.events e WHERE e.id = x.event_id)
          OFFSET 0) AS m
), locked AS MATERIALIZED (
  SELECT o.id
    FROM (SELECT DISTINCT h.id FROM hit h ORDER BY h.id) AS h
   CROSS JOIN LATERAL (SELECT x.id, x.status FROM engage.outbox x WHERE x.id = h.id OFFSET 0 FOR UPDATE) AS o
   WHERE o.status = 'pending'
)
UPDATE engage.outbox o
   SET status = 'cancelled', reason = 'cancel_on',
       cancelled_by = (SELECT h.event_id FROM hit h WHERE h.id = o.id ORDER BY h.event_id LIMIT 1),
       last_error = (SELECT 'cancelled by event ' || h.event_id || ' (' || h.name || ')'
                       FROM hit h WHERE h.id = o.id ORDER BY h.event_id LIMIT 1)
 WHERE o.id = ANY (ARRAY(SELECT l.id FROM locked l))";

/// Cancels messages just queued whose cancelling event is already stored: the triggering event
/// arrived late, after an event that cancels it (same rules as CANCEL).
const CANCEL_STORED: &str = "\
WITH hit AS (
  SELECT o.id,
         (SELECT e.id FROM jsonb_array_elements(o.cancel_on) AS x, engage.events e
           WHERE e.customer_id = o.customer_id AND e.name = x ->> 'event' COLLATE \"C\"
             AND e.occurred_at >= t.occurred_at AND e.occurred_at < o.scheduled_at AND e.id <> t.id
             AND e.properties @> (x -> 'same')
           ORDER BY e.occurred_at, e.id LIMIT 1) AS cancelled_by
    FROM engage.outbox o
    JOIN engage.events t ON t.id = o.event_id
   WHERE o.customer_id = ANY($2) AND o.event_id = ANY($1) AND o.status = 'pending' AND o.cancel_on IS NOT NULL
)
UPDATE engage.outbox o
   SET status = 'cancelled', cancelled_by = h.cancelled_by, reason = 'cancel_on',
       last_error = 'cancelled by event ' || h.cancelled_by || ', stored before this message''s event arrived'
  FROM hit h
 WHERE o.id = h.id AND h.cancelled_by IS NOT NULL";

/// Marks customers whose metrics rollups the statement changed (sql/metrics.sql, "Rollups").
const MARK_METRICS: &str = "INSERT INTO engage.metrics_dirty (customer_id) SELECT unnest($1::text[])";

struct Plans {
    cancel: Prepared,
    cancel_stored: Prepared,
    mark_metrics: Prepared,
    lock_pending: Prepared,
    replace: Prepared,
}

/// How a prepared statement is planned.
#[derive(Clone, Copy)]
enum Planning {
    /// Once, for every call: for statements without joins (an INSERT from arrays) or whose only
    /// plan is a look-up by key per array element. With array parameters the plan cache would
    /// otherwise keep choosing custom plans (the planner sizes `unnest` from the actual array, so
    /// a custom plan always looks cheaper) and plan the statement on every call.
    Generic,
    /// On every call, with the tables' current sizes: for statements that join the growing tables.
    /// A plan kept from a backend's first call, made when a table was nearly empty, joined it with
    /// a sequential scan until the next ANALYZE (25 ms a statement where key look-ups take 0.3).
    EveryCall,
}

/// A statement parsed once per backend and kept.
struct Prepared(pg_sys::SPIPlanPtr);

impl Prepared {
    /// Must be called inside an SPI connection.
    fn prepare(sql: &str, types: &[pg_sys::PgBuiltInOids], planning: Planning) -> Prepared {
        let sql =
            std::ffi::CString::new(sql).unwrap_or_else(|_| sql_error::internal("statement text contains a NUL byte"));
        let mut oids: Vec<pg_sys::Oid> = types.iter().map(|t| t.value()).collect();
        let options = match planning {
            Planning::Generic => pg_sys::CURSOR_OPT_GENERIC_PLAN,
            Planning::EveryCall => pg_sys::CURSOR_OPT_CUSTOM_PLAN,
        };
        // SAFETY: valid statement text and argument types; the plan is kept past SPI_finish.
        unsafe {
            let plan = pg_sys::SPI_prepare_cursor(sql.as_ptr(), oids.len() as i32, oids.as_mut_ptr(), options as i32);
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                sql_error::internal("could not prepare an insert-path statement");
            }
            Prepared(plan)
        }
    }

    /// Runs the plan with `args` (None is SQL NULL). Must be called inside an SPI connection.
    fn execute(&self, args: Vec<Option<pg_sys::Datum>>) {
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0))).collect();
        let nulls: Vec<std::ffi::c_char> =
            args.iter().map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
        // SAFETY: values and nulls match the prepared argument count and types.
        let status = unsafe { pg_sys::SPI_execute_plan(self.0, values.as_mut_ptr(), nulls.as_ptr(), false, 0) };
        if status < 0 {
            sql_error::internal(&format!("insert-path statement failed with SPI status {status}"));
        }
    }

    /// Runs the plan and returns the first column of its rows, a non-null bigint. Must be called
    /// inside an SPI connection.
    fn ids(&self, args: Vec<Option<pg_sys::Datum>>) -> Vec<i64> {
        self.execute(args);
        // SAFETY: execute succeeded, so SPI_tuptable holds its SPI_processed rows.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            if table.is_null() {
                return Vec::new();
            }
            (0..pg_sys::SPI_processed as usize)
                .filter_map(|i| {
                    let mut null = false;
                    let datum = pg_sys::SPI_getbinval(*(*table).vals.add(i), (*table).tupdesc, 1, &mut null);
                    i64::from_datum(datum, null)
                })
                .collect()
        }
    }
}

thread_local! {
    static PLANS: OnceCell<Plans> = const { OnceCell::new() };
}

fn with_plans<R>(f: impl FnOnce(&Plans) -> R) -> R {
    PLANS.with(|cell| {
        let plans = cell.get_or_init(|| {
            use pg_sys::PgBuiltInOids as T;
            // Inside an SPI connection, as SPI_prepare needs.
            Spi::connect(|_client| Plans {
                cancel: Prepared::prepare(
                    CANCEL,
                    &[T::INT8ARRAYOID, T::TEXTARRAYOID, T::TEXTARRAYOID, T::TIMESTAMPTZARRAYOID, T::TEXTARRAYOID],
                    Planning::EveryCall,
                ),
                cancel_stored: Prepared::prepare(
                    CANCEL_STORED,
                    &[T::INT8ARRAYOID, T::TEXTARRAYOID],
                    Planning::EveryCall,
                ),
                mark_metrics: Prepared::prepare(MARK_METRICS, &[T::TEXTARRAYOID], Planning::Generic),
                lock_pending: Prepared::prepare(LOCK_PENDING, &[T::INT8ARRAYOID], Planning::Generic),
                replace: Prepared::prepare(
                    REPLACE,
                    &[
                        T::TEXTARRAYOID,
                        T::TIMESTAMPTZARRAYOID,
                        T::INT4ARRAYOID,
                        T::INT8ARRAYOID,
                        T::INT8ARRAYOID,
                        T::TEXTARRAYOID,
                    ],
                    Planning::Generic,
                ),
            })
        });
        f(plans)
    })
}

/// A PostgreSQL timestamp (microseconds since 2000-01-01) as a timestamptz value.
pub fn timestamptz(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros)
        .unwrap_or_else(|_| sql_error::internal(&format!("timestamp {micros} out of range")))
}

/// Events of the statement that may cancel pending messages.
#[derive(Default)]
pub struct Cancels {
    pub event_id: Vec<i64>,
    pub customer_id: Vec<String>,
    pub name: Vec<String>,
    pub occurred_at: Vec<TimestampWithTimeZone>,
    pub properties: Vec<String>,
}

/// Cancels the pending messages the statement's events cancel.
pub fn cancel(c: Cancels) {
    with_plans(|plans| {
        Spi::connect_mut(|_client| {
            plans.cancel.execute(vec![
                c.event_id.into_datum(),
                c.customer_id.into_datum(),
                c.name.into_datum(),
                c.occurred_at.into_datum(),
                c.properties.into_datum(),
            ])
        })
    })
}

/// Cancels the just-queued messages of these events (and customers) whose cancelling event is
/// already stored.
pub fn cancel_stored(event_ids: Vec<i64>, customer_ids: Vec<&str>) {
    with_plans(|plans| {
        Spi::connect_mut(|_client| plans.cancel_stored.execute(vec![event_ids.into_datum(), customer_ids.into_datum()]))
    })
}

/// Fires the "crosses" triggers whose windowed sum the given events cross (sql/scheduler.sql).
pub fn sum_crossings(event_ids: Vec<i64>) {
    Spi::connect_mut(|client| {
        client.update("SELECT engage.sum_crossings($1)", None, &[event_ids.into()])?;
        Ok::<(), pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not evaluate windowed-sum crossings: {e}")))
}

/// Marks the given customers' metrics rollups out of date.
pub fn mark_metrics(customer_ids: Vec<String>) {
    with_plans(|plans| Spi::connect_mut(|_client| plans.mark_metrics.execute(vec![customer_ids.into_datum()])))
}

/// Locks the given messages against claims; returns those that were still pending.
pub fn lock_pending(ids: Vec<i64>) -> Vec<i64> {
    with_plans(|plans| Spi::connect_mut(|_client| plans.lock_pending.ids(vec![ids.into_datum()])))
}

/// A stored decision a better candidate replaces.
pub struct Replaced<'a> {
    pub customer_id: &'a str,
    pub occurred_at: i64,
    pub trigger_id: i32,
    pub event_id: i64,
}

/// Records the replacements: decisions become conflicts; `withdrawn` messages (pending, locked by
/// `lock_pending`) are suppressed, each with why, for its last_error.
pub fn replace(replaced: Vec<Replaced>, withdrawn: Vec<(i64, String)>) {
    let customer_id: Vec<&str> = replaced.iter().map(|r| r.customer_id).collect();
    let occurred_at: Vec<TimestampWithTimeZone> = replaced.iter().map(|r| timestamptz(r.occurred_at)).collect();
    let trigger_id: Vec<i32> = replaced.iter().map(|r| r.trigger_id).collect();
    let event_id: Vec<i64> = replaced.iter().map(|r| r.event_id).collect();
    let (message, detail): (Vec<i64>, Vec<String>) = withdrawn.into_iter().unzip();
    with_plans(|plans| {
        Spi::connect_mut(|_client| {
            plans.replace.execute(vec![
                customer_id.into_datum(),
                occurred_at.into_datum(),
                trigger_id.into_datum(),
                event_id.into_datum(),
                message.into_datum(),
                detail.into_datum(),
            ])
        })
    })
}
