//! The time zones PostgreSQL knows, for the calendar triggers (sql/scheduler.sql): a profile's
//! zone counts only if it is one of them (else the default zone). Listing them with
//! `pg_timezone_names` loads every zone file, about 50 ms: too much for a minute's tick that has
//! nothing to do. So each backend lists them once and keeps the list for an hour (a tzdata
//! update that adds a zone is seen within the hour).

use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const KEPT_FOR: Duration = Duration::from_secs(3600);

thread_local! {
    static KNOWN: RefCell<Option<(Instant, HashSet<String>)>> = const { RefCell::new(None) };
}

/// The names among `names` that are time zones listed in `pg_timezone_names`, in their order.
#[pg_extern(stable, parallel_safe)]
fn known_time_zones(names: Vec<Option<String>>) -> Vec<String> {
    KNOWN.with_borrow_mut(|known| {
        if known.as_ref().is_none_or(|(read_at, _)| read_at.elapsed() > KEPT_FOR) {
            let zones = Spi::connect(|client| {
                client
                    .select("SELECT name FROM pg_catalog.pg_timezone_names", None, &[])?
                    .map(|row| row.get::<String>(1))
                    .collect::<Result<Vec<Option<String>>, _>>()
            })
            .unwrap_or_else(|e| crate::sql_error::internal(&format!("could not list the time zones: {e}")));
            *known = Some((Instant::now(), zones.into_iter().flatten().collect()));
        }
        let zones = &known.as_ref().map(|(_, zones)| zones);
        names.into_iter().flatten().filter(|name| zones.is_some_and(|z| z.contains(name))).collect()
    })
}
