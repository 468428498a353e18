//! pg_engage's own tables and indexes, opened by name for the insert path's probes and writes. Their
//! OIDs are looked up once per backend (looking them up by name for every statement took a tenth of
//! a single-row INSERT) and checked each time: a relation dropped or re-created since is looked up
//! again.

use crate::sql_error;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

thread_local! {
    static OIDS: RefCell<HashMap<&'static CStr, pg_sys::Oid>> = RefCell::new(HashMap::new());
    /// The `engage` schema's OID when the OIDs above were looked up.
    static NAMESPACE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// Opens `engage.<name>` (a table or an index) with `lock`, held to the end of the transaction.
pub fn open(name: &'static CStr, lock: pg_sys::LOCKMODE) -> pg_sys::Relation {
    // SAFETY: relation opens and catalog reads; a relation opened here but not the one named is
    // closed again before looking the name up.
    unsafe {
        if let Some(oid) = OIDS.with(|oids| oids.borrow().get(name).copied()) {
            let rel = pg_sys::try_relation_open(oid, lock);
            if !rel.is_null() {
                let form = (*rel).rd_rel;
                if CStr::from_ptr((*form).relname.data.as_ptr()) == name
                    && (*form).relnamespace == NAMESPACE.with(|n| n.get())
                {
                    return rel;
                }
                pg_sys::relation_close(rel, lock);
            }
        }
        let namespace = pg_sys::get_namespace_oid(c"engage".as_ptr(), false);
        if NAMESPACE.with(|n| n.replace(namespace)) != namespace {
            OIDS.with(|oids| oids.borrow_mut().clear()); // the schema was re-created
        }
        let oid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
        if oid == pg_sys::InvalidOid {
            sql_error::internal(&format!("missing relation engage.{}", name.to_string_lossy()));
        }
        OIDS.with(|oids| oids.borrow_mut().insert(name, oid));
        pg_sys::relation_open(oid, lock)
    }
}
