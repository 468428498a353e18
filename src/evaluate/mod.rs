//! The insert path: one statement-level AFTER INSERT trigger on `engage.events` that decides,
//! in the inserting transaction, which triggers fire for the statement's new events.
//!
//! Per statement: read the transition table once; match events against the cached rules;
//! fetch profiles once if a rule needs them; lock and count for capped candidates once; apply the
//! policy; write all decisions and outbox rows with one statement.

mod lock;
mod probe;
pub mod rules;
mod store;
mod transition;

use crate::policy::{self, Candidate, Outcome};
use crate::rule::predicate::PG_EPOCH_OFFSET_MICROS;
use crate::rule::{Action, Channel, ChannelChoice, Facts};
use pgrx::prelude::*;
use std::collections::HashMap;

/// An event that some rule may fire for, copied out of the transition table.
struct Pending {
    id: i64,
    customer: usize,
    occurred_at: i64,
    properties: serde_json::Value,
}

/// The trigger function behind `evaluate_events` on engage.events.
#[pg_trigger]
fn evaluate_events<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let rules = rules::current();
    if !rules.is_empty() {
        // SAFETY: this function is only attached by schema.sql as AFTER INSERT FOR EACH STATEMENT
        // REFERENCING NEW TABLE on engage.events.
        unsafe { evaluate(trigger.trigger_data(), &rules) };
    }
    Ok(None)
}

/// Tells every backend (this one at once, others at commit) that trigger definitions changed.
#[pg_trigger]
fn rules_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    rules::mark_stale();
    // SAFETY: tg_relation is the relation the trigger fired on (engage.triggers).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid((*trigger.trigger_data().tg_relation).rd_id) };
    Ok(None)
}

unsafe fn evaluate(data: &pg_sys::TriggerData, rules: &rules::RuleSet) {
    let null = serde_json::Value::Null;
    let mut customers: Vec<String> = Vec::new();
    let mut customer_index: HashMap<String, usize> = HashMap::new();
    let mut events: Vec<Pending> = Vec::new();
    // (event index, rule index) pairs that matched, and ones waiting for the profile.
    let mut matched: Vec<(usize, usize)> = Vec::new();
    let mut needs_profile: Vec<(usize, usize)> = Vec::new();

    let mut cancels = store::Cancels::default();
    transition::for_each_event(data, |row| {
        if rules.cancels(row.name) {
            cancels.event_id.push(row.id);
            cancels.customer_id.push(row.customer_id.to_string());
            cancels.name.push(row.name.to_string());
            cancels.occurred_at.push(store::timestamptz(row.occurred_at));
            cancels.properties.push(row.properties().to_string());
        }
        let candidates = rules.for_event(row.name);
        if candidates.is_empty() {
            return;
        }
        let properties =
            if candidates.iter().any(|&r| rules.rules[r].uses_properties) { row.properties() } else { null.clone() };
        let customer = match customer_index.get(row.customer_id) {
            Some(&i) => i,
            None => {
                customers.push(row.customer_id.to_string());
                customer_index.insert(row.customer_id.to_string(), customers.len() - 1);
                customers.len() - 1
            }
        };
        let event = events.len();
        events.push(Pending { id: row.id, customer, occurred_at: row.occurred_at, properties });
        let facts = Facts {
            properties: &events[event].properties,
            profile: &null,
            occurred_at: row.occurred_at + PG_EPOCH_OFFSET_MICROS,
        };
        for &r in candidates {
            let rule = &rules.rules[r];
            if rule.uses_profile {
                needs_profile.push((event, r));
            } else if rule.definition.matches(&facts) {
                matched.push((event, r));
            }
        }
    });

    let mut profiles: HashMap<String, store::Profile> = HashMap::new();
    if !needs_profile.is_empty() {
        let mut wanted: Vec<&str> =
            needs_profile.iter().map(|&(e, _)| customers[events[e].customer].as_str()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        profiles = store::profiles(wanted).into_iter().collect();
        for (e, r) in needs_profile {
            let event = &events[e];
            let profile = profiles.get(&customers[event.customer]).map_or(&null, |p| &p.attributes);
            let facts = Facts {
                properties: &event.properties,
                profile,
                occurred_at: event.occurred_at + PG_EPOCH_OFFSET_MICROS,
            };
            if rules.rules[r].definition.matches(&facts) {
                matched.push((e, r));
            }
        }
    }
    if !matched.is_empty() {
        decide_and_write(rules, &events, &customers, &profiles, &matched);
    }
    // After the write, so an event also cancels what an earlier event of its own statement queued.
    if !cancels.event_id.is_empty() {
        store::cancel(cancels);
    }
}

/// Applies the policy to the statement's matches and writes decisions and outbox rows.
fn decide_and_write(
    rules: &rules::RuleSet,
    events: &[Pending],
    customers: &[String],
    profiles: &HashMap<String, store::Profile>,
    matched: &[(usize, usize)],
) {
    let mut candidates: Vec<Candidate> = matched
        .iter()
        .map(|&(e, r)| {
            let rule = &rules.rules[r];
            Candidate {
                customer: events[e].customer,
                trigger_id: rule.id,
                priority: rule.definition.priority,
                event_id: events[e].id,
                occurred_at: events[e].occurred_at,
                cap: rule.definition.cap.map(|c| (c.max, c.per_micros)),
                prior_fired: 0,
            }
        })
        .collect();
    let holdouts: Vec<bool> = matched.iter().map(|&(_, r)| rules.rules[r].definition.holdout > 0.0).collect();
    count_prior_fired(&mut candidates, customers, &holdouts);
    let conflict_window = i64::from(crate::CONFLICT_WINDOW.get()) * 1_000_000;
    let mut outcomes = policy::decide(&candidates, conflict_window);
    for ((&(_, r), candidate), outcome) in matched.iter().zip(&candidates).zip(outcomes.iter_mut()) {
        let rule = &rules.rules[r];
        if *outcome == Outcome::Fired
            && policy::in_holdout(&rule.name, &customers[candidate.customer], rule.definition.holdout)
        {
            *outcome = Outcome::HeldOut;
        }
    }

    let mut decisions = store::Decisions::default();
    let mut outbox = store::Outbox::default();
    for ((&(e, r), candidate), outcome) in matched.iter().zip(&candidates).zip(outcomes) {
        let rule = &rules.rules[r];
        let customer_id = customers[candidate.customer].as_str();
        let occurred_at = store::timestamptz(events[e].occurred_at);
        decisions.event_id.push(candidate.event_id);
        decisions.trigger_id.push(rule.id);
        decisions.trigger_version.push(rule.version);
        decisions.customer_id.push(customer_id);
        decisions.occurred_at.push(occurred_at);
        match outcome {
            Outcome::Fired => {
                decisions.outcome.push("fired");
                decisions.reason.push(None);
                let action = &rule.definition.action;
                let preferred = profiles.get(customer_id).and_then(|p| p.preferred_channel.as_deref());
                let (channel, fallback) = choose_channel(action, preferred);
                outbox.event_id.push(candidate.event_id);
                outbox.trigger_id.push(rule.id);
                outbox.customer_id.push(customer_id);
                outbox.channel.push(channel);
                outbox.fallback.push(fallback);
                outbox.template.push(action.template.as_deref());
                outbox.payload.push(&action.payload);
                outbox.due_at.push(store::timestamptz(events[e].occurred_at + rule.definition.wait_micros));
                outbox.cancel_on.push(cancel_conditions(&rule.definition, &events[e].properties));
            }
            Outcome::HeldOut => {
                decisions.outcome.push("held_out");
                decisions.reason.push(None);
            }
            Outcome::Suppressed(reason) => {
                decisions.outcome.push("suppressed");
                decisions.reason.push(Some(reason.as_str()));
            }
        }
    }
    let queued = !outbox.event_id.is_empty();
    store::write(decisions, outbox);
    if queued {
        crate::deliver::wake_after_commit();
    }
}

/// The outbox row's cancel conditions: per cancel_on entry, the event name and, under `same`, the
/// triggering event's values at the correlated paths as a nested object, so that a cancelling
/// event matches when its properties contain it (`@>`).
fn cancel_conditions(definition: &crate::rule::Definition, properties: &serde_json::Value) -> Option<String> {
    if definition.cancel_on.is_empty() {
        return None;
    }
    let conditions: Vec<serde_json::Value> = definition
        .cancel_on
        .iter()
        .map(|c| {
            let mut same = serde_json::Value::Object(Default::default());
            for path in &c.same {
                let value =
                    crate::rule::predicate::lookup(properties, path).cloned().unwrap_or(serde_json::Value::Null);
                let mut node = &mut same;
                for (i, key) in path.iter().enumerate() {
                    let map = match node {
                        serde_json::Value::Object(map) => map,
                        _ => break, // two paths disagree on shape ("a" and "a.b"): keep the first
                    };
                    node = if i + 1 == path.len() {
                        map.entry(key.clone()).or_insert(value.clone())
                    } else {
                        map.entry(key.clone()).or_insert_with(|| serde_json::Value::Object(Default::default()))
                    };
                }
            }
            serde_json::json!({"event": c.event, "same": same})
        })
        .collect();
    Some(serde_json::Value::Array(conditions).to_string())
}

/// The channel to queue on and the comma-separated fallbacks left after it: a `preferred` action
/// takes the customer's preferred channel when it is a known one, else its first fallback.
fn choose_channel(action: &Action, preferred: Option<&str>) -> (&'static str, String) {
    let first = match action.channel {
        ChannelChoice::Fixed(c) => c,
        ChannelChoice::Preferred => preferred.and_then(Channel::parse).unwrap_or(action.fallback[0]),
    };
    let rest: Vec<&str> = action.fallback.iter().filter(|c| **c != first).map(|c| c.as_str()).collect();
    (first.as_str(), rest.join(","))
}

/// Fills `prior_fired` of capped candidates: locks their customers (so concurrent statements
/// cannot both pass one cap), then counts stored fired decisions in each window with a direct
/// probe of the decisions primary key (customer_id, trigger_id, outcome, occurred_at, event_id).
fn count_prior_fired(candidates: &mut [Candidate], customers: &[String], holdouts: &[bool]) {
    let capped: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].cap.is_some()).collect();
    if capped.is_empty() {
        return;
    }
    // A held-out decision is one that would have fired: it counts toward the cap like a fired one.
    let counted_outcomes = |i: usize| -> &'static [&'static str] {
        if holdouts[i] {
            &["fired", "held_out"]
        } else {
            &["fired"]
        }
    };
    lock::lock_customers(capped.iter().map(|&i| customers[candidates[i].customer].as_str()));
    let mut probe = probe::Probe::open(c"decisions", c"decisions_pkey", 5);
    for &i in &capped {
        let c = &candidates[i];
        let (_, window) = c.cap.unwrap_or_default();
        let mut prior = 0;
        for outcome in counted_outcomes(i) {
            let keys = [
                probe::Key::text_eq(1, &customers[c.customer]),
                probe::Key::int4_eq(2, c.trigger_id),
                probe::Key::text_eq(3, outcome),
                probe::Key::timestamptz_gt(4, c.occurred_at.saturating_sub(window)),
                probe::Key::timestamptz_le(4, c.occurred_at),
            ];
            prior += probe.count(&keys);
        }
        candidates[i].prior_fired = prior;
    }
}

/// BEFORE INSERT row trigger on engage.events (only for rows with an idempotency_key): skips the
/// row when an event with the same key is already stored, by anyone, committed or earlier in
/// this transaction or statement. The key's advisory lock makes a concurrent insert of the same
/// key wait until the first one commits or aborts.
#[pg_trigger]
fn skip_duplicate_event<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let Some(new) = trigger.new() else { return Ok(None) };
    let key: Option<String> = new
        .get_by_name("idempotency_key")
        .unwrap_or_else(|e| crate::sql_error::internal(&format!("engage.events.idempotency_key: {e}")));
    let Some(key) = key else { return Ok(Some(new)) };
    lock::lock_idempotency_key(&key);
    let mut probe = probe::Probe::open(c"events", c"events_idempotency_key", 1);
    let seen = probe.count(&[probe::Key::text_eq(1, &key)]) > 0;
    Ok(if seen { None } else { Some(new) })
}
