//! Retention: what leaves the hot tables, and when (README, "Retention and vacuum").
//!
//! - Closed messages (sent, dead, cancelled, suppressed outbox rows) are deleted once closed for
//!   `engage.keep_closed_messages` (default 30 days). The sent log, `engage.messages`, keeps a
//!   row per delivered message for the metrics.
//! - Events and decisions are kept for ever unless `engage.keep_history` is set. Then those older
//!   in event time than that setting *plus* the longest window a trigger reads
//!   ([`Definition::history_needed_micros`], [`history_needed`]) are deleted: an event that
//!   arrives at most `keep_history` late is decided exactly as if nothing had been deleted. An
//!   event a queued message still refers to stays until the message is closed.
//!
//! `engage.purge(...)` (sql/retention.sql) deletes in bounded batches; the scheduler calls it after
//! each tick with these settings, and pg_cron can call it instead.
//!
//! [`Definition::history_needed_micros`]: crate::rule::Definition::history_needed_micros

use crate::{rule, settings};
use pgrx::prelude::*;

/// One batch of purging with the settings, as the scheduler runs it after each tick; how many
/// rows it deleted.
pub fn purge_with_settings() -> Result<Option<i64>, pgrx::spi::Error> {
    Spi::get_one_with_args(
        "SELECT messages + decisions + events \
           FROM engage.purge(pg_catalog.make_interval(secs => $1), pg_catalog.make_interval(secs => $2))",
        &[settings::keep_closed_messages().as_secs_f64().into(), settings::keep_history().as_secs_f64().into()],
    )
}

/// Per trigger (enabled or not: a disabled trigger may come back), how far back in event time
/// its decisions read stored events and decisions. A definition that no longer parses needs
/// everything, as nothing can be said of it.
#[pg_extern(stable)]
fn history_needed(
) -> TableIterator<'static, (name!(trigger_id, i32), name!(trigger_name, String), name!(needed, Interval))> {
    let rows = Spi::connect(|client| -> Result<Vec<(i32, String, i64)>, pgrx::spi::Error> {
        client
            .select("SELECT id, name, definition::text FROM engage.triggers ORDER BY id", None, &[])?
            .map(|row| {
                let id = row.get::<i32>(1)?.unwrap_or(0);
                let name = row.get::<String>(2)?.unwrap_or_default();
                let text = row.get::<String>(3)?.unwrap_or_default();
                let needed = serde_json::from_str(&text)
                    .ok()
                    .and_then(|value| rule::parse(&value).ok())
                    .map_or(rule::journey::FOREVER_MICROS, |d| d.history_needed_micros());
                Ok((id, name, needed))
            })
            .collect()
    })
    .unwrap_or_else(|e| crate::sql_error::internal(&format!("could not read engage.triggers: {e}")));
    TableIterator::new(rows.into_iter().map(|(id, name, micros)| (id, name, Interval::from_micros(micros))))
}
