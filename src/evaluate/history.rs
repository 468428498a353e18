//! What the database already holds about the customers of a statement: stored decisions (for
//! caps and conflicts) and their messages, sent or queued (for frequency caps).
//!
//! Read with direct index probes and a dirty snapshot, after the statement has locked its
//! customers (see `probe` for why that gives exactly the latest rows under every isolation level).
//! The deliverer does not take customer locks: a message it is claiming or completing at this
//! moment can show up twice (old and new row version), so rows are de-duplicated by id, keeping the
//! more advanced status.

use super::probe::{Key, Probe};
use super::rule_cache::RuleSet;
use crate::policy::{Candidate, Queued, Rival};
use crate::rule::Channel;
use crate::stored::{MessageCategory, MessageStatus, StoredOutcome};
use std::collections::HashMap;

/// Fills `stored_fired` of capped candidates: the event times of stored decisions of the same
/// customer and trigger that fired (or were held out, for a trigger with a holdout: a control
/// decision is one that would have fired) within the cap's window on either side of the
/// candidate, `(occurred_at - window, occurred_at + window)`.
pub fn read_stored_fired(candidates: &mut [Candidate], customers: &[String], holdouts: &[bool]) {
    if candidates.iter().all(|c| c.cap.is_none()) {
        return;
    }
    // Only this trigger's fired and held-out decisions, however many others the customer has.
    let mut probe = Probe::open(c"decisions", c"decisions_counted", 4);
    let outcome = probe.column(c"outcome");
    let occurred_at = probe.column(c"occurred_at");
    for (i, c) in candidates.iter_mut().enumerate() {
        let Some((_, window)) = c.cap else { continue };
        let keys = [
            Key::text_eq(1, &customers[c.customer]),
            Key::int4_eq(2, c.trigger_id),
            Key::timestamptz_gt(3, c.occurred_at.saturating_sub(window)),
            Key::timestamptz_lt(3, c.occurred_at.saturating_add(window)),
        ];
        let mut stored = Vec::new();
        probe.for_each(&keys, |row| {
            let counts = match row.text(outcome).as_deref().and_then(StoredOutcome::parse) {
                Some(StoredOutcome::Fired) => true,
                Some(StoredOutcome::HeldOut) => holdouts[i],
                _ => false,
            };
            if let (true, Some(at)) = (counts, row.timestamptz(occurred_at)) {
                stored.push(at);
            }
        });
        c.stored_fired = stored;
    }
}

/// Stored decisions that may compete with the statement's candidates, and the customers'
/// marketing messages.
#[derive(Default)]
pub struct History {
    pub rivals: Vec<Rival>,
    /// Per rival: the id of its pending message (None when it was held out or its message is
    /// already claimed, sent or stopped).
    pub rival_messages: Vec<Option<i64>>,
    /// Per rival: every pending message of it (each step of a journey), which replacing it
    /// withdraws.
    pub rival_steps: Vec<Vec<i64>>,
    pub queued: Vec<Queued>,
    /// Pending messages of replaced rivals this transaction has locked (see `store::lock_pending`).
    pub locked: Vec<i64>,
}

/// One open outbox row of a customer.
struct Open {
    id: i64,
    event_id: i64,
    trigger_id: i32,
    pending: bool,
    marketing: bool,
    channel: Option<Channel>,
    scheduled_at: i64,
}

/// Reads the history of every customer that has a marketing candidate: decisions of other
/// triggers within `conflict_window` of its candidates' event times and, when frequency caps are
/// configured, its marketing messages sent since the earliest window that can matter, and queued.
pub fn read(candidates: &[Candidate], customers: &[String], rules: &RuleSet, conflict_window: i64) -> History {
    // Per customer: (earliest event, latest event, earliest send time) among marketing candidates.
    let mut spans: HashMap<usize, (i64, i64, i64)> = HashMap::new();
    for c in candidates.iter().filter(|c| !c.transactional && c.blocked.is_none()) {
        let span = spans.entry(c.customer).or_insert((c.occurred_at, c.occurred_at, c.send_at));
        span.0 = span.0.min(c.occurred_at);
        span.1 = span.1.max(c.occurred_at);
        span.2 = span.2.min(c.send_at);
    }
    let mut history = History::default();
    if spans.is_empty() {
        return history;
    }
    let longest_cap = rules.frequency_caps.iter().map(|f| f.per_micros).max();
    let mut spans: Vec<(usize, (i64, i64, i64))> = spans.into_iter().collect();
    spans.sort_unstable();

    let mut decisions = Probe::open(c"decisions", c"decisions_rivals", 3);
    // The columns each probe reads, by name (attribute numbers).
    struct DecisionColumns {
        trigger_id: i16,
        event_id: i16,
        occurred_at: i16,
        outcome: i16,
    }
    struct OutboxColumns {
        id: i16,
        event_id: i16,
        trigger_id: i16,
        status: i16,
        category: i16,
        channel: i16,
        scheduled_at: i16,
    }
    struct SentColumns {
        outbox_id: i16,
        channel: i16,
        category: i16,
        sent_at: i16,
    }
    let d = DecisionColumns {
        trigger_id: decisions.column(c"trigger_id"),
        event_id: decisions.column(c"event_id"),
        occurred_at: decisions.column(c"occurred_at"),
        outcome: decisions.column(c"outcome"),
    };
    let mut outbox = Probe::open(c"outbox", c"outbox_open_by_customer", 1);
    let o = OutboxColumns {
        id: outbox.column(c"id"),
        event_id: outbox.column(c"event_id"),
        trigger_id: outbox.column(c"trigger_id"),
        status: outbox.column(c"status"),
        category: outbox.column(c"category"),
        channel: outbox.column(c"channel"),
        scheduled_at: outbox.column(c"scheduled_at"),
    };
    let mut messages = longest_cap.map(|_| {
        let probe = Probe::open(c"messages", c"messages_by_customer", 2);
        let columns = SentColumns {
            outbox_id: probe.column(c"outbox_id"),
            channel: probe.column(c"channel"),
            category: probe.column(c"category"),
            sent_at: probe.column(c"sent_at"),
        };
        (probe, columns)
    });

    for (customer, (first, last, first_send)) in spans {
        let id = customers[customer].as_str();
        // Fired or held-out decisions of other contending triggers near the candidates.
        let first_rival = history.rivals.len();
        let mut fired_rivals = false;
        decisions.for_each(
            &[
                Key::text_eq(1, id),
                Key::timestamptz_ge(2, first.saturating_sub(conflict_window)),
                Key::timestamptz_le(2, last.saturating_add(conflict_window)),
            ],
            |row| {
                let (Some(trigger_id), Some(event_id), Some(occurred_at)) =
                    (row.int4(d.trigger_id), row.int8(d.event_id), row.timestamptz(d.occurred_at))
                else {
                    return;
                };
                let fired = match row.text(d.outcome).as_deref().and_then(StoredOutcome::parse) {
                    Some(StoredOutcome::Fired) => true,
                    Some(StoredOutcome::HeldOut) => false,
                    _ => return,
                };
                // A dropped trigger no longer takes part; transactional ones never do.
                let Some(contender) = rules.contenders.get(&trigger_id).filter(|c| !c.transactional) else {
                    return;
                };
                fired_rivals |= fired;
                history.rivals.push(Rival {
                    customer,
                    trigger_id,
                    priority: contender.priority,
                    event_id,
                    occurred_at,
                    // Held out: nothing was queued, so a better candidate can take its place.
                    replaceable: !fired,
                });
                history.rival_messages.push(None);
                history.rival_steps.push(Vec::new());
            },
        );
        if !fired_rivals && longest_cap.is_none() {
            continue;
        }

        // Open messages, de-duplicated by id (a concurrent claim shows old and new versions).
        let mut open: Vec<Open> = Vec::new();
        outbox.for_each(&[Key::text_eq(1, id)], |row| {
            let (Some(message), Some(event_id), Some(trigger_id), Some(scheduled_at)) =
                (row.int8(o.id), row.int8(o.event_id), row.int4(o.trigger_id), row.timestamptz(o.scheduled_at))
            else {
                return;
            };
            let category = row.text(o.category).as_deref().and_then(MessageCategory::parse);
            if category == Some(MessageCategory::Escalation) {
                return; // a message to a team: neither a rival's message nor the customer's
            }
            let pending = row.text(o.status).as_deref().and_then(MessageStatus::parse) == Some(MessageStatus::Pending);
            if let Some(seen) = open.iter_mut().find(|m| m.id == message) {
                seen.pending &= pending;
                return;
            }
            open.push(Open {
                id: message,
                event_id,
                trigger_id,
                pending,
                marketing: category == Some(MessageCategory::Marketing),
                channel: row.text(o.channel).as_deref().and_then(Channel::parse),
                scheduled_at,
            });
        });
        for r in first_rival..history.rivals.len() {
            let rival = history.rivals[r];
            if let Some(m) = open.iter().find(|m| m.event_id == rival.event_id && m.trigger_id == rival.trigger_id) {
                if m.pending {
                    history.rivals[r].replaceable = true;
                    history.rival_messages[r] = Some(m.id);
                    history.rival_steps[r] = open
                        .iter()
                        .filter(|s| s.pending && s.event_id == rival.event_id && s.trigger_id == rival.trigger_id)
                        .map(|s| s.id)
                        .collect();
                }
            }
        }

        let (Some(longest), Some((messages, m))) = (longest_cap, messages.as_mut()) else { continue };
        for m in open.iter().filter(|m| m.marketing) {
            let Some(channel) = m.channel else { continue };
            let rival = (first_rival..history.rivals.len()).find(|&r| history.rival_messages[r] == Some(m.id));
            history.queued.push(Queued { customer, channel, at: m.scheduled_at, rival });
        }
        let SentColumns { outbox_id: sent_id, channel: sent_channel, category: sent_category, sent_at } = *m;
        messages.for_each(&[Key::text_eq(1, id), Key::timestamptz_gt(2, first_send.saturating_sub(longest))], |row| {
            let counted_as_open = row.int8(sent_id).is_some_and(|sent| open.iter().any(|m| m.id == sent));
            let category = row.text(sent_category).as_deref().and_then(MessageCategory::parse);
            if counted_as_open || category != Some(MessageCategory::Marketing) {
                return;
            }
            if let (Some(channel), Some(at)) =
                (row.text(sent_channel).as_deref().and_then(Channel::parse), row.timestamptz(sent_at))
            {
                history.queued.push(Queued { customer, channel, at, rival: None });
            }
        });
    }
    history
}
