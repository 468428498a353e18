//! The per-backend cache of compiled trigger definitions.
//!
//! Rules are read from `engage.triggers` and compiled once, then reused by every statement until
//! the table changes. A statement trigger on `engage.triggers` calls `engage.rules_changed()`,
//! which queues a relcache invalidation for the table: PostgreSQL delivers it to this backend at
//! the next command and to every other backend when the change commits, and our relcache callback
//! marks the cache stale. So the check on the hot path is one atomic load.

use crate::rule::{self, Definition, Source};
use crate::sql_error;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// One enabled trigger, compiled.
pub struct CompiledRule {
    pub id: i32,
    pub version: i32,
    pub name: String,
    pub definition: Definition,
    pub uses_properties: bool,
    pub uses_profile: bool,
}

/// All enabled triggers, indexed by event name.
#[derive(Default)]
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
    by_event: HashMap<String, Vec<usize>>,
    /// Event names that cancel some trigger's pending messages.
    cancelling: HashSet<String>,
}

impl RuleSet {
    /// Indexes into `rules` of the triggers listening to `event_name`.
    pub fn for_event(&self, event_name: &str) -> &[usize] {
        self.by_event.get(event_name).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether events of this name can cancel pending messages.
    pub fn cancels(&self, event_name: &str) -> bool {
        self.cancelling.contains(event_name)
    }
}

static STALE: AtomicBool = AtomicBool::new(true);
static TRIGGERS_RELID: AtomicU32 = AtomicU32::new(0);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CACHE: RefCell<Rc<RuleSet>> = RefCell::new(Rc::new(RuleSet::default()));
}

/// The current rules, recompiled first if `engage.triggers` changed since the last load.
pub fn current() -> Rc<RuleSet> {
    if STALE.load(Ordering::Acquire) {
        register_callback();
        // Clear the flag before reading, so a change arriving during the read marks it again.
        STALE.store(false, Ordering::Release);
        let loaded = Rc::new(load());
        CACHE.with(|c| *c.borrow_mut() = loaded);
    }
    CACHE.with(|c| Rc::clone(&c.borrow()))
}

/// Marks the cache stale in this backend (other backends learn through the relcache invalidation).
pub fn mark_stale() {
    STALE.store(true, Ordering::Release);
}

fn register_callback() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: registering a plain function with no captured state; called once per backend.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0)) };
    }
}

/// Called by PostgreSQL for every relcache invalidation; `relid` 0 means "all relations".
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = TRIGGERS_RELID.load(Ordering::Acquire);
    if relid == pg_sys::InvalidOid || watched == 0 || relid.to_u32() == watched {
        STALE.store(true, Ordering::Release);
    }
}

fn load() -> RuleSet {
    let rows: Vec<(i32, i32, String, String)> = Spi::connect(|client| {
        let relid =
            client.select("SELECT 'engage.triggers'::regclass::oid", None, &[])?.first().get_one::<pg_sys::Oid>()?;
        if let Some(oid) = relid {
            TRIGGERS_RELID.store(oid.to_u32(), Ordering::Release);
        }
        client
            .select(
                "SELECT id, version, name, definition::text FROM engage.triggers WHERE enabled ORDER BY id",
                None,
                &[],
            )?
            .map(|row| {
                Ok((
                    row.get(1)?.unwrap_or(0),
                    row.get(2)?.unwrap_or(1),
                    row.get(3)?.unwrap_or_default(),
                    row.get(4)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not read engage.triggers: {e}")));

    let mut set = RuleSet::default();
    for (id, version, name, text) in rows {
        let definition = serde_json::from_str(&text)
            .map_err(|e| rule::DefinitionError::new("$", e.to_string()))
            .and_then(|value| rule::parse(&value));
        let definition = match definition {
            Ok(d) => d,
            Err(e) => sql_error::invalid_definition(Some(&name), &e),
        };
        let index = set.rules.len();
        for event in &definition.events {
            set.by_event.entry(event.clone()).or_default().push(index);
        }
        set.cancelling.extend(definition.cancel_on.iter().map(|c| c.event.clone()));
        set.rules.push(CompiledRule {
            id,
            version,
            name,
            uses_properties: definition.uses(Source::Property),
            uses_profile: definition.uses(Source::Profile),
            definition,
        });
    }
    set
}
