//! Direct btree probes for the insert path's look-ups: no SQL, no planning, no executor; one
//! index scan reused for every key of a statement.
//!
//! Probes read with a "dirty" snapshot: rows committed by anyone (even after this transaction's
//! snapshot was taken, so REPEATABLE READ transactions see them too) plus this transaction's own
//! rows, including those of the current statement. Every probe runs under the advisory lock of
//! its key (customer or idempotency key), so no other transaction can have a matching row in
//! flight: "dirty" here means exactly "latest". Tables the insert path does not write under that
//! lock (profiles) are read with an MVCC snapshot instead, as a query would (`open_current`).

use crate::sql_error;
use pgrx::prelude::*;
use std::ffi::CStr;

/// An open index scan over one of pg_engage's own indexes.
pub struct Probe {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
    // Boxed so its address stays valid while the scan uses it.
    snapshot: Box<pg_sys::SnapshotData>,
    /// The MVCC snapshot of a probe opened with `open_current` or beside one, else null.
    registered: pg_sys::Snapshot,
    nkeys: i32,
    skip_in_flight: bool,
}

/// One scan key: column number (1-based), strategy, comparison function, value.
pub struct Key {
    pub column: i16,
    pub strategy: u32,
    pub function: u32,
    pub value: pg_sys::Datum,
}

impl Key {
    pub fn text_eq(column: i16, value: &str) -> Key {
        Key { column, strategy: pg_sys::BTEqualStrategyNumber, function: pg_sys::F_TEXTEQ, value: text_datum(value) }
    }
    pub fn int4_eq(column: i16, value: i32) -> Key {
        Key {
            column,
            strategy: pg_sys::BTEqualStrategyNumber,
            function: pg_sys::F_INT4EQ,
            value: pg_sys::Datum::from(value),
        }
    }
    pub fn timestamptz_ge(column: i16, micros: i64) -> Key {
        Key {
            column,
            strategy: pg_sys::BTGreaterEqualStrategyNumber,
            function: pg_sys::F_TIMESTAMPTZ_GE,
            value: pg_sys::Datum::from(micros),
        }
    }
    pub fn timestamptz_gt(column: i16, micros: i64) -> Key {
        Key {
            column,
            strategy: pg_sys::BTGreaterStrategyNumber,
            function: pg_sys::F_TIMESTAMPTZ_GT,
            value: pg_sys::Datum::from(micros),
        }
    }
    pub fn int8_eq(column: i16, value: i64) -> Key {
        Key {
            column,
            strategy: pg_sys::BTEqualStrategyNumber,
            function: pg_sys::F_INT8EQ,
            value: pg_sys::Datum::from(value),
        }
    }
    pub fn timestamptz_lt(column: i16, micros: i64) -> Key {
        Key {
            column,
            strategy: pg_sys::BTLessStrategyNumber,
            function: pg_sys::F_TIMESTAMPTZ_LT,
            value: pg_sys::Datum::from(micros),
        }
    }
    pub fn timestamptz_le(column: i16, micros: i64) -> Key {
        Key {
            column,
            strategy: pg_sys::BTLessEqualStrategyNumber,
            function: pg_sys::F_TIMESTAMPTZ_LE,
            value: pg_sys::Datum::from(micros),
        }
    }
}

fn text_datum(value: &str) -> pg_sys::Datum {
    value.into_datum().unwrap_or_else(|| sql_error::internal("could not build a text datum"))
}

impl Probe {
    /// Opens a scan on `engage.<index>` of `engage.<table>` taking `nkeys` keys, reading the
    /// latest rows (see the module's comment).
    pub fn open(table: &'static CStr, index: &'static CStr, nkeys: i32) -> Probe {
        Probe::open_with(table, index, nkeys, std::ptr::null_mut())
    }

    /// Opens a scan like `open` that reads rows as a query run now would (a new snapshot under
    /// READ COMMITTED, the transaction's under REPEATABLE READ, with every change of this
    /// transaction so far, such as the profile an earlier row of the statement updated): for
    /// tables the insert path does not write under the customer lock (profiles).
    pub fn open_current(table: &'static CStr, index: &'static CStr, nkeys: i32) -> Probe {
        // SAFETY: as SPI does for each query: see this transaction's changes, then take the
        // snapshot (registered, released with the scan).
        let snapshot = unsafe {
            pg_sys::CommandCounterIncrement();
            pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot())
        };
        Probe::open_with(table, index, nkeys, snapshot)
    }

    /// Opens a scan like `open_current` that reads with this probe's snapshot, so that the two
    /// agree (a probe opened with `open` has none: this one then reads the latest rows too).
    pub fn open_beside(&self, table: &'static CStr, index: &'static CStr, nkeys: i32) -> Probe {
        // SAFETY: registering the snapshot again keeps it for the new probe's life.
        let snapshot = if self.registered.is_null() {
            self.registered
        } else {
            unsafe { pg_sys::RegisterSnapshot(self.registered) }
        };
        Probe::open_with(table, index, nkeys, snapshot)
    }

    /// `registered`: a registered MVCC snapshot this probe releases, or null for the latest rows.
    fn open_with(table: &'static CStr, index: &'static CStr, nkeys: i32, registered: pg_sys::Snapshot) -> Probe {
        // SAFETY: relation opens with locks held to the end of the transaction; the snapshot
        // outlives the scan (it is dropped or unregistered after index_endscan).
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let heap = super::catalog::open(table, lock);
            let index = super::catalog::open(index, lock);
            let mut snapshot: Box<pg_sys::SnapshotData> = Box::new(std::mem::zeroed());
            snapshot.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            let seen = if registered.is_null() { &mut *snapshot } else { registered };
            let scan = pg_sys::index_beginscan(heap, index, seen, nkeys, 0);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            Probe { heap, index, scan, slot, snapshot, registered, nkeys, skip_in_flight: false }
        }
    }

    /// Leaves out rows that another transaction is inserting right now. The insert path's own
    /// tables are written under the customer lock, so only `engage.events` needs this: another
    /// session's event that is stored but not yet decided (it will be, once that session gets the
    /// lock, and it will see ours).
    pub fn skipping_in_flight(mut self) -> Probe {
        self.skip_in_flight = true;
        self
    }

    /// The attribute number of a column of the table.
    pub fn column(&self, name: &CStr) -> i16 {
        // SAFETY: the relation is open; get_attnum only reads the catalog.
        let attnum = unsafe { pg_sys::get_attnum((*self.heap).rd_id, name.as_ptr()) };
        if attnum <= 0 {
            sql_error::internal(&format!("missing column {}", name.to_string_lossy()));
        }
        attnum
    }

    /// How many rows match all `keys`.
    pub fn count(&mut self, keys: &[Key]) -> i64 {
        let mut found = 0;
        self.for_each(keys, |_| found += 1);
        found
    }

    /// Calls `f` with each row matching all `keys`.
    pub fn for_each(&mut self, keys: &[Key], mut f: impl FnMut(&Row)) {
        if keys.len() as i32 != self.nkeys {
            sql_error::internal("an index probe got a different number of keys than it was opened for");
        }
        // SAFETY: `entries` lives through the rescan and the fetches that read it.
        unsafe {
            let mut entries: Vec<pg_sys::ScanKeyData> = Vec::with_capacity(keys.len());
            for key in keys {
                let mut entry: pg_sys::ScanKeyData = std::mem::zeroed();
                pg_sys::ScanKeyInit(
                    &mut entry,
                    key.column,
                    key.strategy as u16,
                    pg_sys::Oid::from(key.function),
                    key.value,
                );
                entries.push(entry);
            }
            pg_sys::index_rescan(self.scan, entries.as_mut_ptr(), self.nkeys, std::ptr::null_mut(), 0);
            while pg_sys::index_getnext_slot(self.scan, pg_sys::ScanDirection::ForwardScanDirection, self.slot) {
                // A dirty snapshot reports the inserting transaction of a row still in progress.
                if self.skip_in_flight && self.snapshot.xmin != pg_sys::InvalidTransactionId {
                    continue;
                }
                f(&Row(self.slot));
            }
        }
    }
}

/// The current row of a probe, read by attribute number (see `Probe::column`).
pub struct Row(*mut pg_sys::TupleTableSlot);

impl Row {
    fn datum(&self, attnum: i16) -> Option<pg_sys::Datum> {
        let mut is_null = false;
        // SAFETY: the slot holds the row just fetched; attnum comes from Probe::column.
        let datum = unsafe { pg_sys::slot_getattr(self.0, i32::from(attnum), &mut is_null) };
        (!is_null).then_some(datum)
    }

    pub fn int4(&self, attnum: i16) -> Option<i32> {
        self.datum(attnum).map(|d| d.value() as i32)
    }

    pub fn int8(&self, attnum: i16) -> Option<i64> {
        self.datum(attnum).map(|d| d.value() as i64)
    }

    /// A timestamptz column, microseconds since 2000-01-01.
    pub fn timestamptz(&self, attnum: i16) -> Option<i64> {
        self.int8(attnum)
    }

    /// A jsonb column as JSON; a value JSON cannot hold reads as missing (see `crate::jsonb`).
    pub fn json(&self, attnum: i16) -> serde_json::Value {
        // SAFETY: the column is of type jsonb; the reader detoasts it.
        self.datum(attnum).map_or(serde_json::Value::Null, |d| unsafe {
            crate::jsonb::read(d, crate::jsonb::Reading::Lenient).unwrap_or(serde_json::Value::Null)
        })
    }

    pub fn text(&self, attnum: i16) -> Option<String> {
        // SAFETY: the column is of type text; from_datum detoasts and copies it.
        self.datum(attnum).and_then(|d| unsafe { String::from_datum(d, false) })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an ERROR is unwinding: the transaction abort releases scan and relations.
        }
        // SAFETY: closes what `open` opened, in reverse order; locks stay until transaction end.
        unsafe {
            pg_sys::index_endscan(self.scan);
            if !self.registered.is_null() {
                pg_sys::UnregisterSnapshot(self.registered);
            }
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}
