//! Writes a statement's decisions, messages and escalations straight into their tables, as COPY
//! does: the rows of each table in one heap multi-insert, then their index entries. No SQL and no
//! executor: planning nothing, starting no plan and parsing no value per row took a third of a
//! single-row INSERT when these rows went through one INSERT statement.
//!
//! Only the insert path writes rows into these tables (roles may only read them), so what a
//! statement would add is added here: each row's every column, its defaults included
//! (`decided_at` and `created_at` are the transaction's start, as `now()`; an outbox id is the
//! next value of its identity sequence). A table that gained or lost a column is refused with an
//! error rather than written wrong. Triggers on these tables do not fire.

use crate::policy::Reason;
use crate::sql_error;
use crate::stored::{MessageCategory, MessageStatus, StoredOutcome};
use pgrx::pg_sys::PgBuiltInOids as T;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;

/// One decision: a trigger's verdict on one event of its customer.
pub struct Decision<'a> {
    pub event_id: i64,
    pub trigger_id: i32,
    pub trigger_version: i32,
    pub customer_id: &'a str,
    /// The event's time, microseconds since 2000-01-01.
    pub occurred_at: i64,
    pub outcome: StoredOutcome,
    /// Why it was suppressed (engage.suppression_reason).
    pub reason: Option<Reason>,
    pub variant: Option<&'a str>,
}

/// One queued message (a journey queues one per step; an escalation's is to a team).
pub struct Message<'a> {
    pub event_id: i64,
    pub trigger_id: i32,
    pub customer_id: &'a str,
    pub channel: &'a str,
    /// Channels still to try after `channel`, in order.
    pub fallback: Vec<&'a str>,
    pub template: Option<&'a str>,
    /// The action's payload, JSON text.
    pub payload: &'a str,
    /// When it is due, microseconds since 2000-01-01 (also its first scheduled time).
    pub due_at: i64,
    /// The resolved cancel conditions, JSON text.
    pub cancel_on: Option<String>,
    pub category: MessageCategory,
    pub variant: Option<&'a str>,
    pub step: i32,
}

/// Each table's columns, in the order the writer gives their values, with their (base) types.
const DECISION_COLUMNS: &[(&str, T)] = &[
    ("event_id", T::INT8OID),
    ("trigger_id", T::INT4OID),
    ("trigger_version", T::INT4OID),
    ("customer_id", T::TEXTOID),
    ("occurred_at", T::TIMESTAMPTZOID),
    ("decided_at", T::TIMESTAMPTZOID),
    ("outcome", T::TEXTOID),
    ("reason", T::TEXTOID),
    ("variant", T::TEXTOID),
];

const OUTBOX_COLUMNS: &[(&str, T)] = &[
    ("id", T::INT8OID),
    ("event_id", T::INT8OID),
    ("trigger_id", T::INT4OID),
    ("customer_id", T::TEXTOID),
    ("channel", T::TEXTOID),
    ("template", T::TEXTOID),
    ("payload", T::JSONBOID),
    ("due_at", T::TIMESTAMPTZOID),
    ("scheduled_at", T::TIMESTAMPTZOID),
    ("cancel_on", T::JSONBOID),
    ("cancelled_by", T::INT8OID),
    ("category", T::TEXTOID),
    ("variant", T::TEXTOID),
    ("step", T::INT4OID),
    ("status", T::TEXTOID),
    ("reason", T::TEXTOID),
    ("fallback", T::TEXTARRAYOID),
    ("attempts", T::INT4OID),
    ("lease", T::INT8OID),
    ("lease_until", T::TIMESTAMPTZOID),
    ("claimed_by", T::TEXTOID),
    ("claimed_at", T::TIMESTAMPTZOID),
    ("sent_at", T::TIMESTAMPTZOID),
    ("provider_message_id", T::TEXTOID),
    ("last_error", T::TEXTOID),
    ("created_at", T::TIMESTAMPTZOID),
];

const ESCALATION_COLUMNS: &[(&str, T)] = &[
    ("event_id", T::INT8OID),
    ("trigger_id", T::INT4OID),
    ("customer_id", T::TEXTOID),
    ("outbox_id", T::INT8OID),
    ("decided_at", T::TIMESTAMPTZOID),
];

/// Writes the rows; returns the ids given to the messages, in order.
pub fn write(decisions: &[Decision], messages: &[Message]) -> Vec<i64> {
    // SAFETY: every datum is built for its column's type (the column lists above, checked
    // against the tables by `Table::open`), in the current memory context, which outlives the
    // inserts.
    unsafe {
        let now = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
        if !decisions.is_empty() {
            let rows = decisions
                .iter()
                .map(|d| {
                    vec![
                        Some(pg_sys::Datum::from(d.event_id)),
                        Some(pg_sys::Datum::from(d.trigger_id)),
                        Some(pg_sys::Datum::from(d.trigger_version)),
                        text(d.customer_id),
                        Some(pg_sys::Datum::from(d.occurred_at)),
                        Some(now),
                        text(d.outcome.as_str()),
                        d.reason.map(|r| r.as_str()).and_then(text),
                        d.variant.and_then(text),
                    ]
                })
                .collect();
            Table::open(c"decisions", DECISION_COLUMNS).insert(rows);
        }
        if messages.is_empty() {
            return Vec::new();
        }
        let mut outbox = Table::open(c"outbox", OUTBOX_COLUMNS);
        let sequence = outbox.identity_sequence(c"id");
        let ids: Vec<i64> = messages
            .iter()
            .map(|_| {
                pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()])
                    .unwrap_or_else(|| sql_error::internal("nextval returned NULL"))
            })
            .collect();
        // A trigger's payload is the same for all its messages: parse each text once.
        let mut payloads: HashMap<&str, Option<pg_sys::Datum>> = HashMap::new();
        let rows = messages
            .iter()
            .zip(&ids)
            .map(|(m, &id)| {
                let payload = *payloads.entry(m.payload).or_insert_with(|| jsonb(m.payload));
                let at = Some(pg_sys::Datum::from(m.due_at));
                vec![
                    Some(pg_sys::Datum::from(id)),
                    Some(pg_sys::Datum::from(m.event_id)),
                    Some(pg_sys::Datum::from(m.trigger_id)),
                    text(m.customer_id),
                    text(m.channel),
                    m.template.and_then(text),
                    payload,
                    at,
                    at,
                    m.cancel_on.as_deref().and_then(jsonb),
                    None,
                    text(m.category.as_str()),
                    m.variant.and_then(text),
                    Some(pg_sys::Datum::from(m.step)),
                    text(MessageStatus::Pending.as_str()),
                    None,
                    m.fallback.clone().into_datum(),
                    Some(pg_sys::Datum::from(0i32)),
                    Some(pg_sys::Datum::from(0i64)),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some(now),
                ]
            })
            .collect();
        outbox.insert(rows);
        drop(outbox);
        let escalations: Vec<Vec<Option<pg_sys::Datum>>> = messages
            .iter()
            .zip(&ids)
            .filter(|(m, _)| m.category == MessageCategory::Escalation)
            .map(|(m, &id)| {
                vec![
                    Some(pg_sys::Datum::from(m.event_id)),
                    Some(pg_sys::Datum::from(m.trigger_id)),
                    text(m.customer_id),
                    Some(pg_sys::Datum::from(id)),
                    Some(now),
                ]
            })
            .collect();
        if !escalations.is_empty() {
            Table::open(c"escalations", ESCALATION_COLUMNS).insert(escalations);
        }
        ids
    }
}

fn text(value: &str) -> Option<pg_sys::Datum> {
    value.into_datum()
}

/// A jsonb datum from JSON text (the rule compiler and `cancel_conditions` made it, so it parses).
fn jsonb(json: &str) -> Option<pg_sys::Datum> {
    let json = std::ffi::CString::new(json).unwrap_or_else(|_| sql_error::internal("JSON text holds a NUL byte"));
    // SAFETY: jsonb_in takes a C string and returns a palloc'd jsonb (or raises a clean ERROR).
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(json.as_ptr().cast_mut()))])
    }
}

/// One of pg_engage's tables, open for inserting rows with their index entries.
struct Table {
    rel: pg_sys::Relation,
    info: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
    /// Per column of the writer's list, its position in the table's rows (0-based).
    positions: Vec<usize>,
    /// A copy of the table's row type, not reference-counted.
    row_type: pg_sys::TupleDesc,
}

impl Table {
    /// Opens `engage.<name>` and its indexes; `columns` must be exactly the table's columns,
    /// of those types (or domains over them).
    unsafe fn open(name: &'static CStr, columns: &[(&str, T)]) -> Table {
        let rel = super::catalog::open(name, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        if (*(*rel).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID {
            sql_error::internal(&format!("engage.{} is not a heap table", name.to_string_lossy()));
        }
        let desc = (*rel).rd_att;
        let mut positions = vec![usize::MAX; columns.len()];
        for i in 0..(*desc).natts as usize {
            let attribute = (*desc).attrs.as_ptr().add(i);
            if (*attribute).attisdropped {
                continue;
            }
            let column = CStr::from_ptr((*attribute).attname.data.as_ptr()).to_string_lossy();
            match columns.iter().position(|(c, _)| *c == column) {
                Some(k) if pg_sys::getBaseType((*attribute).atttypid) != columns[k].1.value() => {
                    sql_error::altered_table(
                        &name.to_string_lossy(),
                        format!("has a column of another type than the insert path writes: {column}"),
                    )
                }
                Some(k) => positions[k] = i,
                None => sql_error::altered_table(
                    &name.to_string_lossy(),
                    format!("has a column the insert path does not write: {column}"),
                ),
            }
        }
        if let Some(k) = positions.iter().position(|&p| p == usize::MAX) {
            sql_error::altered_table(&name.to_string_lossy(), format!("has no column {}", columns[k].0));
        }
        let estate = pg_sys::CreateExecutorState();
        let info = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
        (*info).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(info, rel, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(info, false);
        let row_type = pg_sys::CreateTupleDescCopy(desc);
        Table { rel, info, estate, positions, row_type }
    }

    /// The sequence behind an identity column, looked up once per backend and table.
    unsafe fn identity_sequence(&self, column: &CStr) -> pg_sys::Oid {
        thread_local! {
            static SEQUENCES: std::cell::RefCell<HashMap<pg_sys::Oid, pg_sys::Oid>> = Default::default();
        }
        let table = (*self.rel).rd_id;
        SEQUENCES.with(|sequences| {
            *sequences.borrow_mut().entry(table).or_insert_with(|| {
                let attnum = pg_sys::get_attnum(table, column.as_ptr());
                // PostgreSQL 15's signature (17 takes the relation): the only version built.
                pg_sys::getIdentitySequence(table, attnum, false)
            })
        })
    }

    /// Inserts the rows (values in the writer's column order, None for NULL) and their index
    /// entries; a duplicate key raises unique_violation as an INSERT would.
    unsafe fn insert(&mut self, rows: Vec<Vec<Option<pg_sys::Datum>>>) {
        let natts = (*(*self.rel).rd_att).natts as usize;
        let mut slots: Vec<*mut pg_sys::TupleTableSlot> = Vec::with_capacity(rows.len());
        for row in rows {
            // Virtual slots over an unpinned copy of the row type: a slot of the relation's own
            // pins its row type in the resource owner, whose release of a thousand pins in a
            // statement searched the owner's list each time (1% of a 500-row INSERT).
            let slot = pg_sys::MakeSingleTupleTableSlot(self.row_type, &raw const pg_sys::TTSOpsVirtual);
            pg_sys::ExecClearTuple(slot);
            for i in 0..natts {
                *(*slot).tts_isnull.add(i) = true;
            }
            for (value, &position) in row.into_iter().zip(&self.positions) {
                if let Some(datum) = value {
                    *(*slot).tts_values.add(position) = datum;
                    *(*slot).tts_isnull.add(position) = false;
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            slots.push(slot);
        }
        pg_sys::heap_multi_insert(
            self.rel,
            slots.as_mut_ptr(),
            slots.len() as i32,
            pg_sys::GetCurrentCommandId(true),
            0,
            std::ptr::null_mut(),
        );
        for slot in slots {
            // PostgreSQL 15's signature (16 added `onlySummarizing`): the only version built.
            pg_sys::ExecInsertIndexTuples(
                self.info,
                slot,
                self.estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            let per_row = (*self.estate).es_per_tuple_exprcontext;
            if !per_row.is_null() {
                pg_sys::MemoryContextReset((*per_row).ecxt_per_tuple_memory);
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an ERROR is unwinding: the transaction abort releases what is open.
        }
        // SAFETY: closes what `open` opened; the lock stays until the end of the transaction.
        unsafe {
            pg_sys::ExecCloseIndices(self.info);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}
