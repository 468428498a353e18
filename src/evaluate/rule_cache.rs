//! The per-backend cache of compiled trigger definitions and the policy settings the insert path
//! needs (channels' quiet hours and opt-in rule, frequency caps).
//!
//! They are read from `engage.triggers`, `engage.channels` and `engage.frequency_caps` once, then
//! reused by every statement until one of those tables changes. A statement trigger on each calls
//! `engage.rules_changed()`, which queues a relcache invalidation for the table: PostgreSQL
//! delivers it to this backend at the next command and to every other backend when the change
//! commits, and our relcache callback marks the cache stale. So the check on the hot path is one
//! atomic load.

use crate::policy::quiet_hours::QuietHours;
use crate::policy::FrequencyCap;
use crate::rule::{self, Channel, Definition, Source};
use crate::sql_error;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

/// One enabled trigger, compiled.
pub struct CompiledRule {
    pub id: i32,
    pub version: i32,
    pub name: String,
    pub definition: Definition,
    pub uses_properties: bool,
    pub uses_profile: bool,
    /// For a pattern trigger: the event names its pattern reads, and those that can complete it.
    pub pattern_reads: Vec<String>,
    anchor_names: Vec<String>,
}

impl CompiledRule {
    /// Whether an event of this name can be where the rule's pattern completes.
    pub fn anchors(&self, event_name: &str) -> bool {
        self.anchor_names.iter().any(|n| n == event_name)
    }
}

/// All enabled triggers, indexed by event name.
#[derive(Default)]
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
    by_event: HashMap<String, Vec<usize>>,
    /// Pattern triggers by the event names that can complete their pattern.
    by_pattern_event: HashMap<String, Vec<usize>>,
    /// Event names that cancel some trigger's pending messages.
    cancelling: HashSet<String>,
    /// Every trigger, enabled or not, as a rival in conflicts with stored decisions.
    pub contenders: HashMap<i32, Contender>,
    pub channels: HashMap<Channel, ChannelPolicy>,
    pub frequency_caps: Vec<FrequencyCap>,
    /// Event names that change the metrics rollups (goal events, message responses): their
    /// customers are marked in engage.metrics_dirty.
    metric_events: HashSet<String>,
    /// Triggers, enabled or not, that have a goal: their exposures are in the rollups.
    pub with_goal: HashSet<i32>,
    /// Event names whose windowed sum some enabled "crosses" trigger watches.
    summed: HashSet<String>,
}

/// How a trigger ranks against others in a conflict.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    pub priority: i32,
    /// Transactional triggers take no part in conflicts.
    pub transactional: bool,
}

/// What the insert path applies per channel when a marketing trigger fires.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelPolicy {
    pub quiet_hours: Option<QuietHours>,
    pub requires_opt_in: bool,
}

impl RuleSet {
    /// Indexes into `rules` of the triggers listening to `event_name`.
    pub fn for_event(&self, event_name: &str) -> &[usize] {
        self.by_event.get(event_name).map_or(&[], Vec::as_slice)
    }

    /// Indexes into `rules` of the pattern triggers an event of this name can complete.
    pub fn patterns_completed_by(&self, event_name: &str) -> &[usize] {
        self.by_pattern_event.get(event_name).map_or(&[], Vec::as_slice)
    }

    /// Whether no statement can need evaluating: no enabled trigger, nothing for the rollups.
    /// (A "crosses" trigger is an enabled trigger.)
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.metric_events.is_empty()
    }

    /// Whether some "crosses" trigger sums events of this name.
    pub fn sums(&self, event_name: &str) -> bool {
        self.summed.contains(event_name)
    }

    /// Whether events of this name change the metrics rollups of their customer.
    pub fn marks_metrics(&self, event_name: &str) -> bool {
        self.metric_events.contains(event_name)
    }

    /// Whether events of this name can cancel pending messages.
    pub fn cancels(&self, event_name: &str) -> bool {
        self.cancelling.contains(event_name)
    }
}

/// The response events the metrics views read (sql/metrics.sql, engage.message_facts_of).
const RESPONSE_EVENTS: [&str; 7] = [
    "message_delivered",
    "message_opened",
    "message_clicked",
    "message_replied",
    "message_bounced",
    "message_complained",
    "unsubscribe",
];

static STALE: AtomicBool = AtomicBool::new(true);
/// The relations whose changes make the cache stale: triggers, channels, frequency_caps.
static WATCHED_RELIDS: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CACHE: RefCell<Rc<RuleSet>> = RefCell::new(Rc::new(RuleSet::default()));
}

/// The current rules, recompiled first if `engage.triggers` changed since the last load.
pub fn current() -> Rc<RuleSet> {
    if STALE.load(Ordering::Acquire) {
        register_callback();
        // Clear the flag before reading, so a change arriving during the read marks it again; and
        // mark it again if the read fails (a lock timeout, a cancel, a permission error), so the
        // next statement retries instead of deciding with a rule set it never loaded.
        STALE.store(false, Ordering::Release);
        let on_failure = MarkStaleOnDrop;
        let loaded = Rc::new(load());
        CACHE.with(|c| *c.borrow_mut() = loaded);
        std::mem::forget(on_failure);
        if crate::workers::preloaded() {
            LOADS.get().fetch_add(1, Ordering::AcqRel);
        }
    }
    CACHE.with(|c| Rc::clone(&c.borrow()))
}

/// How many times a backend loaded the rule set since the server started, in shared memory (only
/// when pg_engage is preloaded). A number that keeps climbing means definitions, channels or caps
/// change often and every backend pays for reading them again.
static LOADS: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_engage_rule_set_loads") };

/// Called when preloading (`crate::workers::register`): the shared load counter.
pub fn init_shared() {
    pg_shmem_init!(LOADS = AtomicI64::new(0));
}

/// Rule-set loads by all backends since the server started; NULL when pg_engage is not in
/// shared_preload_libraries (there is no shared memory to count in).
#[pg_extern(volatile, parallel_safe)]
fn rule_cache_loads() -> Option<i64> {
    crate::workers::preloaded().then(|| LOADS.get().load(Ordering::Acquire))
}

/// Marks the cache stale when dropped; `current` forgets it once the load succeeded. An ERROR
/// raised while loading unwinds through `current` (pgrx turns it into a Rust panic up to the
/// function's boundary), and the drop runs on the way.
struct MarkStaleOnDrop;

impl Drop for MarkStaleOnDrop {
    fn drop(&mut self) {
        mark_stale();
    }
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
    let watched = |w: &AtomicU32| {
        let w = w.load(Ordering::Acquire);
        w == 0 || w == relid.to_u32()
    };
    if relid == pg_sys::InvalidOid || WATCHED_RELIDS.iter().any(watched) {
        STALE.store(true, Ordering::Release);
    }
}

/// One row of engage.triggers, as read.
pub(super) struct TriggerRow {
    pub id: i32,
    pub version: i32,
    pub name: String,
    pub definition: String,
    pub enabled: bool,
    /// The priority column: ranks a disabled trigger whose definition no longer parses.
    pub priority: i32,
}

/// The rows of engage.frequency_caps, in id order: for the insert path's rule set, and for the
/// deliverer's send-time re-check.
pub fn frequency_caps(client: &pgrx::spi::SpiClient) -> Result<Vec<FrequencyCap>, pgrx::spi::Error> {
    let mut caps = Vec::new();
    for row in client.select(
        "SELECT channel, max_messages, (extract(epoch FROM per) * 1000000)::int8 FROM engage.frequency_caps ORDER BY id",
        None,
        &[],
    )? {
        caps.push(FrequencyCap {
            channel: row.get::<String>(1)?.as_deref().and_then(Channel::parse),
            max: i64::from(row.get::<i32>(2)?.unwrap_or(1)),
            per_micros: row.get(3)?.unwrap_or(0),
        });
    }
    Ok(caps)
}

fn load() -> RuleSet {
    let mut set = RuleSet::default();
    let rows = Spi::connect(|client| -> Result<Vec<TriggerRow>, pgrx::spi::Error> {
        let relids = client.select(
            "SELECT array['engage.triggers'::regclass::oid, 'engage.channels'::regclass::oid, \
                          'engage.frequency_caps'::regclass::oid]",
            None,
            &[],
        )?;
        let relids: Vec<pg_sys::Oid> = relids.first().get_one::<Vec<pg_sys::Oid>>()?.unwrap_or_default();
        for (watched, oid) in WATCHED_RELIDS.iter().zip(relids) {
            watched.store(oid.to_u32(), Ordering::Release);
        }
        for row in client.select(
            "SELECT kind, to_char(quiet_hours_start, 'HH24:MI:SS'), to_char(quiet_hours_end, 'HH24:MI:SS'), \
                    requires_opt_in FROM engage.channels",
            None,
            &[],
        )? {
            let Some(kind) = row.get::<String>(1)?.as_deref().and_then(Channel::parse) else { continue };
            let quiet_hours = match (row.get::<String>(2)?, row.get::<String>(3)?) {
                (Some(start), Some(end)) => QuietHours::parse(&start, &end),
                _ => None,
            };
            set.channels.insert(kind, ChannelPolicy { quiet_hours, requires_opt_in: row.get(4)?.unwrap_or(false) });
        }
        set.frequency_caps = frequency_caps(client)?;
        client
            .select(
                "SELECT id, version, name, definition::text, enabled, priority FROM engage.triggers ORDER BY id",
                None,
                &[],
            )?
            .map(|row| {
                Ok(TriggerRow {
                    id: row.get(1)?.unwrap_or(0),
                    version: row.get(2)?.unwrap_or(1),
                    name: row.get(3)?.unwrap_or_default(),
                    definition: row.get(4)?.unwrap_or_default(),
                    enabled: row.get(5)?.unwrap_or(false),
                    priority: row.get(6)?.unwrap_or(0),
                })
            })
            .collect()
    })
    .unwrap_or_else(|e| sql_error::internal(&format!("could not read trigger definitions and policies: {e}")));
    if let Err((name, error)) = set.compile(rows) {
        sql_error::invalid_definition(Some(&name), &error);
    }
    set
}

impl RuleSet {
    /// Compiles the triggers' definitions and indexes them by the event names they listen to; a
    /// definition that does not compile is returned with its trigger's name.
    pub(super) fn compile(&mut self, rows: Vec<TriggerRow>) -> Result<(), (String, rule::DefinitionError)> {
        if !rows.is_empty() {
            self.metric_events.extend(RESPONSE_EVENTS.iter().map(|e| e.to_string()));
        }
        for row in rows {
            // Every trigger, enabled or not, ranks in conflicts (its queued messages are rivals)
            // and counts for metrics with its goal.
            let definition = serde_json::from_str(&row.definition)
                .map_err(|e| rule::DefinitionError::new("$", e.to_string()))
                .and_then(|value| rule::parse(&value));
            let definition = match (definition, row.enabled) {
                (Ok(d), _) => d,
                (Err(e), true) => return Err((row.name, e)),
                (Err(_), false) => {
                    self.contenders.insert(row.id, Contender { priority: row.priority, transactional: false });
                    continue;
                }
            };
            self.contenders.insert(
                row.id,
                Contender {
                    priority: definition.priority,
                    transactional: definition.category == rule::Category::Transactional,
                },
            );
            if let Some(goal) = &definition.goal {
                self.metric_events.insert(goal.event.clone());
                self.with_goal.insert(row.id);
            }
            if !row.enabled {
                continue;
            }
            let index = self.rules.len();
            for event in &definition.events {
                self.by_event.entry(event.clone()).or_default().push(index);
            }
            if let Some(occasion) = &definition.occasion {
                self.by_event.entry(rule::occasion::event_name_for(&row.name)).or_default().push(index);
                self.summed.extend(occasion.summed_event().map(str::to_string));
            }
            let steps_cancel = definition.later_steps.iter().flat_map(|s| &s.cancel_on);
            self.cancelling.extend(definition.cancel_on.iter().chain(steps_cancel).map(|c| c.event.clone()));
            let (pattern_reads, anchor_names) = match &definition.pattern {
                Some(p) => {
                    for name in p.completing_events() {
                        self.by_pattern_event.entry(name).or_default().push(index);
                    }
                    (p.read_events(), p.anchor_events())
                }
                None => (Vec::new(), Vec::new()),
            };
            self.rules.push(CompiledRule {
                id: row.id,
                version: row.version,
                name: row.name,
                uses_properties: definition.uses(Source::Property),
                uses_profile: definition.uses(Source::Profile),
                pattern_reads,
                anchor_names,
                definition,
            });
        }
        Ok(())
    }
}
