//! The insert path: one statement-level AFTER INSERT trigger on `engage.events` that decides,
//! in the inserting transaction, which triggers fire for the statement's new events.
//!
//! Per statement: read the transition table once; match events against the cached rules;
//! fetch the matched customers' profiles once (profile rules, consent, suppression, time zone);
//! plan each match (variant, channel, send time); lock the customers and read their history with
//! index probes; apply the policy; write all decisions and outbox rows straight into their tables
//! (`write`).

mod catalog;
pub mod consent;
mod history;
mod lock;
mod membership;
mod pattern;
#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
mod probe;
mod profile;
pub mod rule_cache;
mod store;
mod transition;
mod write;

use crate::instant::UnixMicros;
use crate::policy::{self, quiet_hours, Candidate, Outcome};
use crate::rule::{Action, Category, Channel, ChannelChoice, Facts};
use crate::stored::{MessageCategory, StoredOutcome};
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
    let rules = rule_cache::current();
    if !rules.is_empty() {
        // SAFETY: this function is only attached by schema.sql as AFTER INSERT FOR EACH STATEMENT
        // REFERENCING NEW TABLE on engage.events.
        unsafe { evaluate(trigger.trigger_data(), &rules) };
    }
    Ok(None)
}

/// Tells every backend (this one at once, others at commit) that trigger definitions or channel
/// and frequency-cap policies changed; and wakes the deliverer at commit, so a channel enabled
/// again delivers its held messages at once rather than at the next poll.
#[pg_trigger]
fn rules_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    rule_cache::mark_stale();
    // SAFETY: tg_relation is the relation the trigger fired on (engage.triggers, channels or
    // frequency_caps).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid((*trigger.trigger_data().tg_relation).rd_id) };
    crate::deliver::wake::after_commit();
    Ok(None)
}

unsafe fn evaluate(data: &pg_sys::TriggerData, rules: &rule_cache::RuleSet) {
    let null = serde_json::Value::Null;
    let mut customers: Vec<String> = Vec::new();
    let mut customer_index: HashMap<String, usize> = HashMap::new();
    let mut events: Vec<Pending> = Vec::new();
    // (event index, rule index) pairs that matched, and ones waiting for the profile.
    let mut matched: Vec<(usize, usize)> = Vec::new();
    let mut needs_profile: Vec<(usize, usize)> = Vec::new();

    let mut cancels = store::Cancels::default();
    // Customers whose metrics rollups this statement changes.
    let mut marked: Vec<String> = Vec::new();
    // Events whose windowed sum a "crosses" trigger watches.
    let mut summed: Vec<i64> = Vec::new();
    // Events that can complete some pattern trigger's pattern.
    let mut pattern_inputs: Vec<pattern::Input> = Vec::new();
    let mut intern = |customers: &mut Vec<String>, id: &str| match customer_index.get(id) {
        Some(&i) => i,
        None => {
            customers.push(id.to_string());
            customer_index.insert(id.to_string(), customers.len() - 1);
            customers.len() - 1
        }
    };
    transition::for_each_event(data, |row| {
        if rules.marks_metrics(row.name) {
            marked.push(row.customer_id.to_string());
        }
        if rules.sums(row.name) {
            summed.push(row.id);
        }
        if rules.cancels(row.name) {
            cancels.event_id.push(row.id);
            cancels.customer_id.push(row.customer_id.to_string());
            cancels.name.push(row.name.to_string());
            cancels.occurred_at.push(store::timestamptz(row.occurred_at));
            cancels.properties.push(row.properties().to_string());
        }
        let patterns = rules.patterns_completed_by(row.name);
        if !patterns.is_empty() {
            let customer = intern(&mut customers, row.customer_id);
            pattern_inputs.push(pattern::Input {
                id: row.id,
                customer,
                occurred_at: row.occurred_at,
                rules: patterns.to_vec(),
            });
        }
        let candidates = rules.for_event(row.name);
        if candidates.is_empty() {
            return;
        }
        let properties =
            if candidates.iter().any(|&r| rules.rules[r].uses_properties) { row.properties() } else { null.clone() };
        let customer = intern(&mut customers, row.customer_id);
        let event = events.len();
        events.push(Pending { id: row.id, customer, occurred_at: row.occurred_at, properties });
        let facts = Facts {
            properties: &events[event].properties,
            profile: &null,
            occurred_at: UnixMicros::from_pg(row.occurred_at),
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

    if !pattern_inputs.is_empty() {
        // Every customer of the statement that may be decided for, locked at once (in slot order,
        // so no deadlock), before their histories are read.
        lock::lock_customers(customers.iter().map(String::as_str));
        let mut completed = Vec::new();
        pattern::anchors(rules, &pattern_inputs, &customers, &mut events, &mut completed);
        for (e, r) in completed {
            let event = &events[e];
            let facts = Facts {
                properties: &event.properties,
                profile: &null,
                occurred_at: UnixMicros::from_pg(event.occurred_at),
            };
            if rules.rules[r].uses_profile {
                needs_profile.push((e, r));
            } else if rules.rules[r].definition.matches(&facts) {
                matched.push((e, r));
            }
        }
    }

    if !matched.is_empty() || !needs_profile.is_empty() {
        // One look-up for every customer with a match: profile rules, consent, suppression,
        // preferred channel and time zone all come from it.
        let mut wanted: Vec<&str> =
            matched.iter().chain(&needs_profile).map(|&(e, _)| customers[events[e].customer].as_str()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let profiles = profile::read(&wanted, rules.rules.iter().any(|r| r.uses_profile));
        for (e, r) in needs_profile {
            let event = &events[e];
            let profile = profiles.get(&customers[event.customer]).map_or(&null, |p| &p.attributes);
            let facts =
                Facts { properties: &event.properties, profile, occurred_at: UnixMicros::from_pg(event.occurred_at) };
            if rules.rules[r].definition.matches(&facts) {
                matched.push((e, r));
            }
        }
        if !matched.is_empty() {
            decide_and_write(rules, &events, &customers, &profiles, &matched, &mut marked);
        }
    }
    // After the write, so an event also cancels what an earlier event of its own statement queued.
    if !cancels.event_id.is_empty() {
        store::cancel(cancels);
    }
    if !marked.is_empty() {
        marked.sort_unstable();
        marked.dedup();
        store::mark_metrics(marked);
    }
    // Last: a crossing inserts its own `trigger:` event, decided by a nested run of this trigger.
    if !summed.is_empty() {
        store::sum_crossings(summed);
    }
}

/// One match, planned: the event and the rule it matched, its customer, and the variant drawn,
/// the action and channel it would use, when it would go.
struct Match<'a> {
    event: &'a Pending,
    rule: &'a rule_cache::CompiledRule,
    customer_id: &'a str,
    profile: &'a profile::Profile,
    variant: Option<&'a str>,
    action: &'a Action,
    /// The chosen channel and the fallbacks left after it, or why no channel is allowed.
    channel: Result<(Channel, Vec<Channel>), policy::Reason>,
    send_at: i64,
}

/// Decides the statement's matches and writes their decisions and messages, in stages: plan each
/// match, lock the customers and read their history, settle the policy, replace the rivals it
/// beat, build the rows, write them. Adds to `marked` the customers whose exposures to a trigger
/// with a goal changed.
fn decide_and_write(
    rules: &rule_cache::RuleSet,
    events: &[Pending],
    customers: &[String],
    profiles: &HashMap<String, profile::Profile>,
    matched: &[(usize, usize)],
    marked: &mut Vec<String>,
) {
    // The default zone only matters to quiet hours: read the setting only when a channel has them.
    let default_zone = if rules.channels.values().any(|c| c.quiet_hours.is_some()) {
        crate::settings::default_timezone()
    } else {
        String::new()
    };
    let no_profile = profile::Profile::default();
    let matches: Vec<Match> = matched
        .iter()
        .map(|&(e, r)| {
            let customer_id = customers[events[e].customer].as_str();
            let profile = profiles.get(customer_id).unwrap_or(&no_profile);
            plan(rules, &rules.rules[r], customer_id, profile, &events[e], &default_zone)
        })
        .collect();
    let mut candidates: Vec<Candidate> = matches.iter().map(candidate).collect();

    // Serialise the statement's customers against concurrent statements, then read their history.
    lock::lock_customers(matches.iter().map(|m| m.customer_id));
    let holdouts: Vec<bool> = matches.iter().map(|m| m.rule.definition.holdout > 0.0).collect();
    history::read_stored_fired(&mut candidates, customers, &holdouts);
    let conflict_window = crate::settings::conflict_window().as_micros() as i64;
    let mut history = history::read(&candidates, customers, rules, conflict_window);
    let memberships = membership::read(&matches, customers);

    let verdict = loop {
        let entrants = memberships.apply(&mut candidates);
        let verdict = settle(rules, &candidates, &mut history, conflict_window);
        // An entrant the policy suppressed did not enter: the matches it kept out may.
        let suppressed: Vec<(usize, policy::Reason)> = entrants
            .into_iter()
            .filter_map(|i| match verdict.outcomes[i] {
                Outcome::Suppressed(reason) => Some((i, reason)),
                _ => None,
            })
            .collect();
        if suppressed.is_empty() {
            break verdict;
        }
        for (i, reason) in suppressed {
            candidates[i].blocked = Some(reason);
        }
    };
    let mut outcomes = verdict.outcomes;
    for (m, outcome) in matches.iter().zip(outcomes.iter_mut()) {
        if *outcome == Outcome::Fired && policy::in_holdout(&m.rule.name, m.customer_id, m.rule.definition.holdout) {
            *outcome = Outcome::HeldOut;
        }
    }
    replace_rivals(rules, customers, &candidates, &outcomes, &history, &verdict.replaced, marked);

    let (decisions, messages) = rows(rules, &matches, &outcomes, &default_zone, marked);
    // Messages that wait for a cancelling event, checked against the events already stored.
    let (waiting_events, waiting_customers): (Vec<i64>, Vec<&str>) =
        messages.iter().filter(|m| m.cancel_on.is_some()).map(|m| (m.event_id, m.customer_id)).unzip();
    write::write(&decisions, &messages);
    if !waiting_events.is_empty() {
        store::cancel_stored(waiting_events, waiting_customers);
    }
    if !messages.is_empty() {
        crate::deliver::wake::after_commit();
    }
}

/// What the policy needs to know of a match.
fn candidate(m: &Match) -> Candidate {
    let definition = &m.rule.definition;
    Candidate {
        customer: m.event.customer,
        trigger_id: m.rule.id,
        priority: definition.priority,
        event_id: m.event.id,
        occurred_at: m.event.occurred_at,
        cap: definition.cap.map(|c| (c.max, c.per_micros)),
        stored_fired: Vec::new(),
        transactional: definition.category == Category::Transactional,
        blocked: m.channel.as_ref().err().copied(),
        channel: m.channel.as_ref().map_or(Channel::Webhook, |(c, _)| *c),
        send_at: m.send_at,
    }
}

/// Applies the policy. A rival it replaces must still be pending when its messages are withdrawn:
/// they are locked first; one a deliverer claimed meanwhile stands, and the policy decides again.
fn settle(
    rules: &rule_cache::RuleSet,
    candidates: &[Candidate],
    history: &mut history::History,
    conflict_window: i64,
) -> policy::Verdict {
    loop {
        let verdict =
            policy::decide(candidates, &history.rivals, &history.queued, &rules.frequency_caps, conflict_window);
        let mut unlocked: Vec<i64> = verdict
            .replaced
            .iter()
            .flat_map(|&r| &history.rival_steps[r])
            .copied()
            .filter(|m| !history.locked.contains(m))
            .collect();
        // In id order, as every statement that locks messages does, so two cannot deadlock.
        unlocked.sort_unstable();
        unlocked.dedup();
        if unlocked.is_empty() {
            return verdict;
        }
        let locked = store::lock_pending(unlocked.clone());
        for m in unlocked {
            if locked.contains(&m) {
                history.locked.push(m);
                continue;
            }
            for steps in &mut history.rival_steps {
                steps.retain(|&s| s != m);
            }
            if let Some(r) = history.rival_messages.iter().position(|&x| x == Some(m)) {
                history.rivals[r].replaceable = false;
            }
        }
    }
}

/// Turns the replaced rivals' decisions into conflicts and withdraws their messages, each naming
/// what replaced it: its customer's best candidate that was not beaten (the last of equals).
fn replace_rivals(
    rules: &rule_cache::RuleSet,
    customers: &[String],
    candidates: &[Candidate],
    outcomes: &[Outcome],
    history: &history::History,
    replaced: &[usize],
    marked: &mut Vec<String>,
) {
    if replaced.is_empty() {
        return;
    }
    let mut winners: HashMap<usize, &Candidate> = HashMap::new();
    let unbeaten =
        candidates.iter().zip(outcomes).filter(|(_, o)| **o != Outcome::Suppressed(policy::Reason::Conflict));
    for (c, _) in unbeaten {
        let best = winners.entry(c.customer).or_insert(c);
        if (c.priority, std::cmp::Reverse(c.trigger_id)) >= (best.priority, std::cmp::Reverse(best.trigger_id)) {
            *best = c;
        }
    }
    let mut withdrawn = Vec::new();
    let mut decisions = Vec::with_capacity(replaced.len());
    for &r in replaced {
        let rival = &history.rivals[r];
        if rules.with_goal.contains(&rival.trigger_id) {
            marked.push(customers[rival.customer].clone());
        }
        let detail = winners.get(&rival.customer).map_or_else(
            || "conflict: replaced by a higher-priority trigger".to_string(),
            |w| format!("conflict: replaced by trigger {} (event {})", w.trigger_id, w.event_id),
        );
        withdrawn.extend(history.rival_steps[r].iter().map(|&m| (m, detail.clone())));
        decisions.push(store::Replaced {
            customer_id: &customers[rival.customer],
            occurred_at: rival.occurred_at,
            trigger_id: rival.trigger_id,
            event_id: rival.event_id,
        });
    }
    store::replace(decisions, withdrawn);
}

/// The rows to write: a decision per match; for a fired one its message (and a journey's later
/// steps); an escalation's message to its team for every match the trigger's own cap let through.
fn rows<'a>(
    rules: &'a rule_cache::RuleSet,
    matches: &[Match<'a>],
    outcomes: &[Outcome],
    default_zone: &str,
    marked: &mut Vec<String>,
) -> (Vec<write::Decision<'a>>, Vec<write::Message<'a>>) {
    let mut decisions = Vec::with_capacity(matches.len());
    let mut messages = Vec::new();
    for (m, &outcome) in matches.iter().zip(outcomes) {
        let (rule, event, customer_id) = (m.rule, m.event, m.customer_id);
        let definition = &rule.definition;
        if let Some(escalation) = &definition.escalate {
            let facts = Facts {
                properties: &event.properties,
                profile: &m.profile.attributes,
                occurred_at: UnixMicros::from_pg(event.occurred_at),
            };
            // A team hears of every match its trigger's own cap lets through, whatever the
            // customer's consent or the other policies say about messaging the customer.
            if outcome != Outcome::Suppressed(policy::Reason::Cap)
                && escalation.when.as_ref().is_none_or(|w| w.holds(&facts))
            {
                messages.push(write::Message {
                    event_id: event.id,
                    trigger_id: rule.id,
                    customer_id,
                    channel: Channel::Webhook.as_str(),
                    fallback: Vec::new(),
                    template: None,
                    payload: &escalation.action.payload,
                    due_at: event.occurred_at,
                    cancel_on: None,
                    category: MessageCategory::Escalation,
                    variant: None,
                    step: 0,
                });
            }
        }
        if matches!(outcome, Outcome::Fired | Outcome::HeldOut) && rules.with_goal.contains(&rule.id) {
            marked.push(customer_id.to_string());
        }
        let (verdict, reason) = match outcome {
            Outcome::Fired => (StoredOutcome::Fired, None),
            Outcome::HeldOut => (StoredOutcome::HeldOut, None),
            Outcome::Suppressed(reason) => (StoredOutcome::Suppressed, Some(reason)),
        };
        decisions.push(write::Decision {
            event_id: event.id,
            trigger_id: rule.id,
            trigger_version: rule.version,
            customer_id,
            occurred_at: event.occurred_at,
            outcome: verdict,
            reason,
            variant: m.variant,
        });
        let (Outcome::Fired, Ok((channel, fallback))) = (outcome, &m.channel) else { continue };
        let step_message =
            |step: i32, (channel, fallback): (Channel, &[Channel]), action: &'a Action, due_at, cancel_on| {
                write::Message {
                    event_id: event.id,
                    trigger_id: rule.id,
                    customer_id,
                    channel: channel.as_str(),
                    fallback: fallback.iter().map(|c| c.as_str()).collect(),
                    template: action.template.as_deref(),
                    payload: &action.payload,
                    due_at,
                    cancel_on: cancel_conditions(cancel_on, &event.properties),
                    category: definition.category.into(),
                    variant: if step == 0 { m.variant } else { None },
                    step,
                }
            };
        messages.push(step_message(0, (*channel, fallback), m.action, m.send_at, &definition.cancel_on));
        // A journey's later steps are queued now too, each to be cancelled by its own conditions
        // and the exit; the deliverer checks consent and caps again when each is due.
        for (k, step) in definition.later_steps.iter().enumerate() {
            let (routed, send_at) =
                route(rules, &step.action, step.wait_micros, definition.category, m.profile, event, default_zone);
            let (channel, fallback) =
                routed.unwrap_or_else(|_| choose_channel(&step.action, m.profile.preferred_channel.as_deref()));
            messages.push(step_message(k as i32 + 1, (channel, &fallback), &step.action, send_at, &step.cancel_on));
        }
    }
    (decisions, messages)
}

/// Plans one match: draws its variant, then routes the variant's (or the trigger's) action.
fn plan<'a>(
    rules: &'a rule_cache::RuleSet,
    rule: &'a rule_cache::CompiledRule,
    customer_id: &'a str,
    profile: &'a profile::Profile,
    event: &'a Pending,
    default_zone: &str,
) -> Match<'a> {
    let definition = &rule.definition;
    let (variant, action, wait) = if definition.variants.is_empty() {
        (None, &definition.action, definition.wait_micros)
    } else {
        let weights: Vec<f64> = definition.variants.iter().map(|v| v.weight).collect();
        let v = &definition.variants[policy::variant_index(&rule.name, customer_id, &weights)];
        (Some(v.name.as_str()), &v.action, v.wait_micros)
    };
    let (channel, send_at) = route(rules, action, wait, definition.category, profile, event, default_zone);
    Match { event, rule, customer_id, profile, variant, action, channel, send_at }
}

/// Routes one action: the first channel the customer may receive it on (preferred channel, then
/// fallbacks; skipping suppressed channels and, for marketing, channels without consent) with the
/// fallbacks left after it, or why there is none; and its send time, the event time plus the wait,
/// moved to the end of the customer's local quiet hours on that channel for marketing messages.
fn route(
    rules: &rule_cache::RuleSet,
    action: &Action,
    wait: i64,
    category: Category,
    profile: &profile::Profile,
    event: &Pending,
    default_zone: &str,
) -> (Result<(Channel, Vec<Channel>), policy::Reason>, i64) {
    let marketing = category == Category::Marketing;
    let (first, fallback) = choose_channel(action, profile.preferred_channel.as_deref());
    let options = std::iter::once(first).chain(fallback.iter().copied());
    let mut blocked = None;
    let mut channel = None;
    for (position, option) in options.enumerate() {
        let requires_opt_in = rules.channels.get(&option).is_some_and(|p| p.requires_opt_in);
        match policy::refusal(option.as_str(), &profile.suppressed, &profile.consent, requires_opt_in, marketing) {
            Some(reason) => {
                blocked.get_or_insert(reason);
            }
            None => {
                channel = Some((option, fallback.iter().skip(position).copied().collect()));
                break;
            }
        }
    }
    let mut send_at = event.occurred_at.saturating_add(wait);
    if let (true, Some((c, _))) = (marketing, &channel) {
        if let Some(quiet) = rules.channels.get(c).and_then(|p| p.quiet_hours) {
            let zone = quiet_hours::zone(profile.timezone.as_deref(), default_zone);
            if let Some(until) = UnixMicros::from_pg(send_at).to_chrono().and_then(|t| quiet.deferral(t, zone)) {
                send_at = UnixMicros::from_chrono(&until).to_pg();
            }
        }
    }
    (channel.ok_or(blocked.unwrap_or(policy::Reason::Consent)), send_at)
}

/// The outbox row's cancel conditions: per cancel_on entry, the event name and, under `same`, the
/// triggering event's values at the correlated paths (`correlation`), so that a cancelling event
/// matches when its properties contain them (`@>`).
fn cancel_conditions(cancel_on: &[crate::rule::CancelOn], properties: &serde_json::Value) -> Option<String> {
    if cancel_on.is_empty() {
        return None;
    }
    let conditions: Vec<serde_json::Value> =
        cancel_on.iter().map(|c| serde_json::json!({"event": c.event, "same": correlation(c, properties)})).collect();
    Some(serde_json::Value::Array(conditions).to_string())
}

/// The triggering event's values at a cancel condition's `same` paths, as a nested object (a path
/// the event lacks holds null).
fn correlation(cancel: &crate::rule::CancelOn, properties: &serde_json::Value) -> serde_json::Value {
    let mut same = serde_json::Value::Object(Default::default());
    for path in &cancel.same {
        let value = crate::rule::predicate::lookup(properties, path).cloned().unwrap_or(serde_json::Value::Null);
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
    same
}

/// The first channel to try and the fallbacks after it: a `preferred` action takes the customer's
/// preferred channel when it is a known one, else its first fallback.
fn choose_channel(action: &Action, preferred: Option<&str>) -> (Channel, Vec<Channel>) {
    let first = match action.channel {
        ChannelChoice::Fixed(c) => c,
        ChannelChoice::Preferred => preferred.and_then(Channel::parse).unwrap_or(action.fallback[0]),
    };
    (first, action.fallback.iter().copied().filter(|c| *c != first).collect())
}

/// BEFORE INSERT row trigger on engage.events (only for rows with an idempotency_key): skips the
/// row when the customer already has an event with the same key, committed or earlier in this
/// transaction or statement. Keys are per customer. The key's advisory lock makes a concurrent
/// insert of the same customer and key wait until the first one commits or aborts.
#[pg_trigger]
fn skip_duplicate_event<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let Some(new) = trigger.new() else { return Ok(None) };
    let column = |name: &str| -> Option<String> {
        new.get_by_name(name).unwrap_or_else(|e| crate::sql_error::internal(&format!("engage.events.{name}: {e}")))
    };
    let Some(key) = column("idempotency_key") else { return Ok(Some(new)) };
    // NOT NULL, so only absent if the table were altered under us; then there is nothing to match.
    let Some(customer) = column("customer_id") else { return Ok(Some(new)) };
    lock::lock_idempotency_key(&customer, &key);
    let mut probe = probe::Probe::open(c"events", c"events_idempotency_key", 2);
    let seen = probe.count(&[probe::Key::text_eq(1, &customer), probe::Key::text_eq(2, &key)]) > 0;
    Ok(if seen { None } else { Some(new) })
}

#[cfg(test)]
mod tests {
    //! The pure stages of the insert path: planning a match and building its rows.
    use super::*;
    use crate::evaluate::rule_cache::{ChannelPolicy, RuleSet, TriggerRow};
    use crate::policy::quiet_hours::QuietHours;
    use serde_json::json;

    const HOUR: i64 = 3_600_000_000;

    fn rules(definitions: &[(&str, serde_json::Value)]) -> RuleSet {
        let mut set = RuleSet::default();
        let compiled = set.compile(
            definitions
                .iter()
                .enumerate()
                .map(|(i, (name, definition))| TriggerRow {
                    id: i as i32 + 1,
                    version: 1,
                    name: name.to_string(),
                    definition: definition.to_string(),
                    enabled: true,
                    priority: 0,
                })
                .collect(),
        );
        if let Err((name, e)) = compiled {
            panic!("{name}: {e}");
        }
        set
    }

    fn event(properties: serde_json::Value) -> Pending {
        // 2026-01-01 12:00 UTC, microseconds since 2000-01-01.
        Pending { id: 7, customer: 0, occurred_at: 820_497_600_000_000, properties }
    }

    fn profile(preferred: Option<&str>, consent: serde_json::Value, suppressed: &[&str]) -> profile::Profile {
        profile::Profile {
            attributes: serde_json::Value::Null,
            preferred_channel: preferred.map(str::to_string),
            consent,
            timezone: None,
            suppressed: suppressed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn cancel_conditions_carry_the_triggering_events_values_at_the_same_paths() {
        let cancel = |event: &str, same: &[&[&str]]| crate::rule::CancelOn {
            event: event.to_string(),
            same: same.iter().map(|p| p.iter().map(|k| k.to_string()).collect()).collect(),
        };
        let properties = json!({"cart": {"id": "c9", "value": 40}, "sku": "s1"});
        assert_eq!(cancel_conditions(&[], &properties), None);
        let conditions = cancel_conditions(
            &[
                cancel("purchase", &[&["cart", "id"], &["sku"]]),
                cancel("unsubscribe", &[]),
                cancel("x", &[&["missing"]]),
            ],
            &properties,
        )
        .unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&conditions).unwrap_or_default(),
            json!([
                {"event": "purchase", "same": {"cart": {"id": "c9"}, "sku": "s1"}},
                {"event": "unsubscribe", "same": {}},
                {"event": "x", "same": {"missing": null}}
            ])
        );
        // Two paths that disagree on shape: the first one's value stands.
        let clash = correlation(&cancel("p", &[&["a"], &["a", "b"]]), &json!({"a": 1}));
        assert_eq!(clash, json!({"a": 1}));
    }

    #[test]
    fn a_match_routes_to_the_first_channel_the_customer_may_receive_and_keeps_the_rest_as_fallback() {
        let set = rules(&[(
            "t",
            json!({"event": "e", "wait": "1h",
                   "action": {"channel": "preferred", "fallback": ["sms", "email", "push"], "template": "x"}}),
        )]);
        let e = event(json!({}));
        // Preferred push is suppressed, sms lacks consent: email, with push still to try after it.
        let p = profile(Some("push"), json!({"sms": false}), &["push"]);
        let m = plan(&set, &set.rules[0], "c", &p, &e, "");
        assert_eq!(m.channel, Ok((Channel::Email, vec![])));
        assert_eq!(m.send_at, e.occurred_at + HOUR);
        // No channel left: the first refusal is the reason.
        let p = profile(None, json!({"all": false}), &[]);
        assert_eq!(plan(&set, &set.rules[0], "c", &p, &e, "").channel, Err(policy::Reason::Consent));
    }

    #[test]
    fn a_marketing_message_due_in_quiet_hours_waits_for_their_end_in_the_customers_zone() {
        let mut set = rules(&[("t", json!({"event": "e", "action": {"channel": "email", "template": "x"}}))]);
        set.channels.insert(
            Channel::Email,
            ChannelPolicy { quiet_hours: QuietHours::parse("11:00:00", "14:00:00"), requires_opt_in: false },
        );
        let e = event(json!({}));
        let mut p = profile(None, json!({}), &[]);
        // 12:00 UTC is 13:00 in Paris: inside 11:00-14:00, so the message waits one hour.
        p.timezone = Some("Europe/Paris".to_string());
        assert_eq!(plan(&set, &set.rules[0], "c", &p, &e, "UTC").send_at, e.occurred_at + HOUR);
        // 12:00 in New York's morning (07:00) is outside them.
        p.timezone = Some("America/New_York".to_string());
        assert_eq!(plan(&set, &set.rules[0], "c", &p, &e, "UTC").send_at, e.occurred_at);
    }

    #[test]
    fn rows_give_a_decision_per_match_a_message_per_fired_step_and_the_team_its_escalation() {
        let set = rules(&[(
            "series",
            json!({"event": "e",
                   "steps": [{"wait": "1h", "action": {"channel": "email", "template": "a"}, "cancel_on": [{"event": "stop", "same": ["k"]}]},
                             {"wait": "2h", "action": {"channel": "webhook", "payload": {"n": 2}}}],
                   "escalate": {"action": {"channel": "webhook", "payload": {"team": "ops"}}}}),
        )]);
        let e = event(json!({"k": 3}));
        let p = profile(None, json!({}), &[]);
        let m = plan(&set, &set.rules[0], "c", &p, &e, "");
        let outcomes =
            [Outcome::Fired, Outcome::Suppressed(policy::Reason::Conflict), Outcome::Suppressed(policy::Reason::Cap)];
        let shown: Vec<String> = outcomes
            .iter()
            .map(|&o| {
                let (decisions, messages) = rows(&set, std::slice::from_ref(&m), &[o], "", &mut Vec::new());
                let d = &decisions[0];
                let messages: Vec<String> = messages
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{}:{}:{}:{}",
                            m.category.as_str(),
                            m.step,
                            m.channel,
                            (m.due_at - e.occurred_at) / HOUR,
                            m.cancel_on.as_deref().unwrap_or("-")
                        )
                    })
                    .collect();
                format!("{}/{} {}", d.outcome.as_str(), d.reason.map_or("-", |r| r.as_str()), messages.join(" "))
            })
            .collect();
        assert_eq!(
            shown,
            [
                r#"fired/- escalation:0:webhook:0:- marketing:0:email:1:[{"event":"stop","same":{"k":3}}] marketing:1:webhook:2:-"#,
                "suppressed/conflict escalation:0:webhook:0:-",
                "suppressed/cap ",
            ]
        );
    }
}
