//! Reading the statement's transition table (the new `engage.events` rows) directly from its
//! tuplestore: one pass, no SPI query, no planning.

use crate::sql_error;
use pgrx::prelude::*;

/// One new event, borrowed from the tuplestore slot: valid only inside the visiting closure.
pub struct EventRow<'a> {
    pub id: i64,
    pub customer_id: &'a str,
    pub name: &'a str,
    /// PostgreSQL timestamp: microseconds since 2000-01-01 UTC.
    pub occurred_at: i64,
    properties: Option<pg_sys::Datum>,
}

impl EventRow<'_> {
    /// The event's properties as JSON (done only for events whose candidate rules need them);
    /// a value JSON cannot hold reads as missing (see `crate::jsonb`).
    pub fn properties(&self) -> serde_json::Value {
        // SAFETY: the datum is a jsonb value of the current slot, alive while the row is visited.
        self.properties.map_or(serde_json::Value::Null, |d| unsafe {
            crate::jsonb::read(d, crate::jsonb::Reading::Lenient).unwrap_or(serde_json::Value::Null)
        })
    }
}

/// Attribute positions (0-based) of the columns the evaluator reads.
struct Columns {
    id: usize,
    customer_id: usize,
    name: usize,
    properties: usize,
    occurred_at: usize,
    count: i32,
}

impl Columns {
    unsafe fn find(tupdesc: pg_sys::TupleDesc) -> Columns {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
        let position = |wanted: &str| {
            attrs
                .iter()
                .position(|a| !a.attisdropped && pgrx::name_data_to_str(&a.attname) == wanted)
                .unwrap_or_else(|| sql_error::internal(&format!("engage.events has no column \"{wanted}\"")))
        };
        let cols = Columns {
            id: position("id"),
            customer_id: position("customer_id"),
            name: position("name"),
            properties: position("properties"),
            occurred_at: position("occurred_at"),
            count: 0,
        };
        let last =
            [cols.id, cols.customer_id, cols.name, cols.properties, cols.occurred_at].into_iter().max().unwrap_or(0);
        Columns { count: last as i32 + 1, ..cols }
    }
}

/// Calls `visit` for every row of the trigger's NEW transition table, in insertion order.
///
/// # Safety
/// `data` must be the `TriggerData` of an AFTER ... FOR EACH STATEMENT trigger on engage.events
/// declared with `REFERENCING NEW TABLE`.
pub unsafe fn for_each_event(data: &pg_sys::TriggerData, mut visit: impl FnMut(&EventRow)) {
    let store = data.tg_newtable;
    if store.is_null() {
        sql_error::internal("the evaluate trigger was created without REFERENCING NEW TABLE");
    }
    let tupdesc = (*data.tg_relation).rd_att;
    let cols = Columns::find(tupdesc);
    let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsMinimalTuple);
    // Our own read pointer, as a NamedTuplestoreScan does, so other readers are unaffected.
    let pointer = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
    pg_sys::tuplestore_select_read_pointer(store, pointer);
    pg_sys::tuplestore_rescan(store);
    while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
        pg_sys::slot_getsomeattrs(slot, cols.count);
        let value = |i: usize| -> Option<pg_sys::Datum> {
            if *(*slot).tts_isnull.add(i) {
                None
            } else {
                Some(*(*slot).tts_values.add(i))
            }
        };
        let text = |i: usize| value(i).and_then(|d| <&str>::from_polymorphic_datum(d, false, pg_sys::TEXTOID));
        let (Some(id), Some(customer_id), Some(name), Some(occurred_at)) =
            (value(cols.id), text(cols.customer_id), text(cols.name), value(cols.occurred_at))
        else {
            sql_error::internal("an engage.events row has a NULL id, customer_id, name or occurred_at");
        };
        visit(&EventRow {
            id: id.value() as i64,
            customer_id,
            name,
            occurred_at: occurred_at.value() as i64,
            properties: value(cols.properties),
        });
    }
    pg_sys::tuplestore_select_read_pointer(store, 0);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
}
