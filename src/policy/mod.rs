//! Policy: which matching candidates of one statement fire, and why the others do not; holdout
//! groups and experiment variants; quiet hours (`quiet_hours`).
//!
//! Pure arithmetic over candidates. The caller (the insert path) supplies what the database
//! knows, read under each customer's lock: fired decisions already stored in each capped
//! trigger's window, stored decisions of other triggers near each candidate (`Rival`), and the
//! customer's messages sent or queued (`Queued`). No SPI here.

pub mod quiet_hours;

use crate::rule::Channel;
use std::cmp::Reverse;
use std::collections::HashMap;

/// Why a matching trigger did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The trigger's own per-customer cap was reached in its window.
    Cap,
    /// A higher-priority trigger fired for the same customer within the conflict window.
    Conflict,
    /// A frequency cap across triggers (engage.frequency_caps) was reached.
    Frequency,
    /// The customer opted out of (or never opted in to) every channel the action could use.
    Consent,
    /// The customer is on the suppression list for every channel the action could use.
    Suppression,
    /// The customer is still in this journey (reentry "after_finish").
    Reentry,
}

impl Reason {
    /// Every reason; SQL's domain engage.suppression_reason lists the same (a pg_test compares them).
    #[cfg(any(test, feature = "pg_test"))]
    pub const ALL: [Reason; 6] =
        [Reason::Cap, Reason::Conflict, Reason::Frequency, Reason::Consent, Reason::Suppression, Reason::Reentry];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Cap => "cap",
            Reason::Conflict => "conflict",
            Reason::Frequency => "frequency",
            Reason::Consent => "consent",
            Reason::Suppression => "suppression",
            Reason::Reentry => "reentry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Fired,
    /// Would have fired, but the customer is in the trigger's control group: recorded, not sent.
    HeldOut,
    Suppressed(Reason),
}

/// A number in [0, 1) drawn from SHA-256 of the parts joined with ':': the same parts give the
/// same number in every session, release and replay.
fn stable_fraction(parts: &[&str]) -> f64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0
}

/// Whether a customer is in a trigger's control group: SHA-256("<trigger name>:<customer id>")
/// as a fraction below `share`.
pub fn in_holdout(trigger_name: &str, customer_id: &str, share: f64) -> bool {
    share > 0.0 && stable_fraction(&[trigger_name, customer_id]) < share
}

/// The experiment variant of a customer, by weight: SHA-256("<trigger>:<customer>:variant"), a
/// draw independent of the holdout's.
pub fn variant_index(trigger_name: &str, customer_id: &str, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut point = stable_fraction(&[trigger_name, customer_id, "variant"]) * total;
    for (i, w) in weights.iter().enumerate() {
        if point < *w {
            return i;
        }
        point -= w;
    }
    weights.len().saturating_sub(1)
}

/// Why the customer may not receive a message on `channel`, if they may not: on the suppression
/// list (`suppressed`: channels, or "all") for it, or, for a marketing message, without consent
/// for it. The insert path routes with it; the deliverer asks it again at send time.
pub fn refusal(
    channel: &str,
    suppressed: &[String],
    consent: &serde_json::Value,
    requires_opt_in: bool,
    marketing: bool,
) -> Option<Reason> {
    if suppressed.iter().any(|s| s == "all" || s == channel) {
        Some(Reason::Suppression)
    } else if marketing && !consents(consent, channel, requires_opt_in) {
        Some(Reason::Consent)
    } else {
        None
    }
}

/// Marketing consent for a channel: the customer's answer for that channel, else their answer for
/// "all" (`profiles.consent`), else yes unless the channel requires an explicit opt-in.
pub fn consents(consent: &serde_json::Value, channel: &str, requires_opt_in: bool) -> bool {
    match consent.get(channel).or_else(|| consent.get("all")) {
        Some(serde_json::Value::Bool(answer)) => *answer,
        // Fail closed: anything but a boolean (engage.profiles refuses it, but a value can only be
        // read as one answer) is no consent.
        Some(_) => false,
        None => !requires_opt_in,
    }
}

/// The key a consent answer is stored under for a channel name as apps write it: the channel's
/// own name (case and surrounding spaces ignored) or `all`; None for anything else.
pub fn consent_key(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    if name == "all" {
        return Some("all");
    }
    Channel::parse(&name).map(Channel::as_str)
}

/// Why a stored consent document is refused: keys are consent keys as stored (lower case), values
/// booleans.
pub fn consent_problem(consent: &serde_json::Value) -> Option<String> {
    let serde_json::Value::Object(map) = consent else {
        return Some("profiles.consent must be a JSON object such as {\"email\": true}".to_string());
    };
    for (key, value) in map {
        if consent_key(key) != Some(key.as_str()) {
            return Some(format!(
                "profiles.consent has an unknown channel \"{}\": the keys are email, sms, whatsapp, push, webhook or all",
                crate::rule::error::excerpt(key)
            ));
        }
        if !value.is_boolean() {
            return Some(format!(
                "profiles.consent.{key} must be true or false, got {}",
                crate::rule::error::show(value)
            ));
        }
    }
    None
}

/// At most `max` marketing messages per customer in any rolling window of `per_micros`, on one
/// channel or (None) on all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub channel: Option<Channel>,
    pub max: i64,
    pub per_micros: i64,
}

impl FrequencyCap {
    /// As a suppression's detail: "frequency cap: 3 messages per 1 day on sms".
    pub fn describe(&self) -> String {
        const UNITS: [(i64, &str); 4] =
            [(86_400_000_000, "day"), (3_600_000_000, "hour"), (60_000_000, "minute"), (1_000_000, "second")];
        let per = UNITS
            .iter()
            .find(|(unit, _)| self.per_micros % unit == 0)
            .map(|&(unit, name)| {
                let n = self.per_micros / unit;
                format!("{n} {name}{}", if n == 1 { "" } else { "s" })
            })
            .unwrap_or_else(|| format!("{} microseconds", self.per_micros));
        let on = self.channel.map(|c| format!(" on {}", c.as_str())).unwrap_or_default();
        format!("frequency cap: {} messages per {per}{on}", self.max)
    }
}

/// The first frequency cap (in the order given) that one more marketing message on `channel` at
/// `at` would break: a cap on its channel or on all channels with `max` messages already within
/// `per` of `at`, before or after it, among `others` (channel and time of the customer's other
/// marketing messages). The one rule of frequency caps: the insert path asks it with the messages
/// sent, queued and fired earlier in the statement, each at its send time; the deliverer asks it
/// again at send time with the messages actually sent before.
pub fn over_frequency_cap<'a>(
    caps: &'a [FrequencyCap],
    channel: Channel,
    at: i64,
    others: &[(Channel, i64)],
) -> Option<&'a FrequencyCap> {
    caps.iter().filter(|cap| cap.channel.is_none_or(|ch| ch == channel)).find(|cap| {
        let within = others
            .iter()
            .filter(|&&(other, when)| {
                cap.channel.is_none_or(|ch| ch == other) && when.abs_diff(at) < cap.per_micros.unsigned_abs()
            })
            .count() as i64;
        within >= cap.max
    })
}

/// One (event, trigger) match, as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index of the customer within the statement (same customer, same index).
    pub customer: usize,
    pub trigger_id: i32,
    pub priority: i32,
    pub event_id: i64,
    /// Event time, microseconds.
    pub occurred_at: i64,
    /// `(max, window)` when the trigger is capped.
    pub cap: Option<(i64, i64)>,
    /// Event times of the fired decisions already stored for this customer and trigger that can
    /// share a cap window with this one: `(occurred_at - window, occurred_at + window)`, on both
    /// sides, since a late or out-of-order event can be decided after later ones.
    pub stored_fired: Vec<i64>,
    /// Transactional: no conflicts, no frequency caps.
    pub transactional: bool,
    /// Already decided before the policy runs: no channel the action could use is allowed.
    pub blocked: Option<Reason>,
    /// The channel the message would go out on, and when (after its wait and quiet hours).
    pub channel: Channel,
    pub send_at: i64,
}

/// A decision stored by an earlier statement for a customer of this one, of a trigger that may
/// compete with a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Rival {
    pub customer: usize,
    pub trigger_id: i32,
    pub priority: i32,
    pub event_id: i64,
    pub occurred_at: i64,
    /// Nothing went out for it yet (its message is pending, or it was held out), so a better
    /// candidate can take its place.
    pub replaceable: bool,
}

/// A marketing message of a customer of the statement, sent or still queued.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    pub customer: usize,
    pub channel: Channel,
    /// When it was sent, or when it is scheduled.
    pub at: i64,
    /// The rival whose message it is, if any (a replaced rival's message no longer counts).
    pub rival: Option<usize>,
}

/// The policy's verdict on a statement.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub outcomes: Vec<Outcome>,
    /// Indexes of rivals that a better candidate replaces: their messages are withdrawn and their
    /// decisions become conflicts.
    pub replaced: Vec<usize>,
}

/// Decides every candidate of a statement, in this order:
///
/// 1. `blocked` candidates (no allowed channel) are suppressed with that reason.
/// 2. Caps, per (customer, trigger), in event-time order: a candidate fires only if no rolling
///    window of the cap that contains it would then hold more than max fired decisions, counting
///    the stored ones on both sides of it in event time and the ones fired earlier in this
///    statement.
/// 3. Conflicts, per customer, among marketing candidates that passed and rivals: rivals whose
///    message is already out stand. Then, in priority order (ties: lower trigger id, then earlier
///    event), a candidate or replaceable rival is kept unless something of another trigger kept
///    before it lies within `conflict_window` of event time. A beaten candidate is a conflict; a
///    beaten rival is replaced (only a candidate can beat a rival: stored decisions were already
///    settled among themselves).
/// 4. Frequency caps, in the same priority order: a marketing candidate fires only if, for each
///    cap on its channel or on all channels, fewer than max messages (queued, sent, or fired
///    earlier in this order) lie strictly within `per` of its send time, either side.
pub fn decide(
    candidates: &[Candidate],
    rivals: &[Rival],
    queued: &[Queued],
    frequency_caps: &[FrequencyCap],
    conflict_window: i64,
) -> Verdict {
    let mut outcomes = apply_caps(candidates);
    let mut replaced = vec![false; rivals.len()];

    // Conflicts. Entries are candidates (Ok) and rivals (Err), sorted by customer then rank.
    let contends = |c: &Candidate| !c.transactional;
    let mut order: Vec<Result<usize, usize>> = (0..candidates.len())
        .filter(|&i| outcomes[i] == Outcome::Fired && contends(&candidates[i]))
        .map(Ok)
        .chain((0..rivals.len()).map(Err))
        .collect();
    let key = |entry: &Result<usize, usize>| match *entry {
        Ok(i) => {
            let c = &candidates[i];
            (c.customer, Reverse(c.priority), c.trigger_id, c.occurred_at, c.event_id)
        }
        Err(r) => {
            let r = &rivals[r];
            (r.customer, Reverse(r.priority), r.trigger_id, r.occurred_at, r.event_id)
        }
    };
    order.sort_by_cached_key(key);
    // Rivals whose message is already out stand, whatever their rank.
    let mut standing: HashMap<usize, Vec<(i32, i64, bool)>> = HashMap::new();
    for r in rivals.iter().filter(|r| !r.replaceable) {
        standing.entry(r.customer).or_default().push((r.trigger_id, r.occurred_at, false));
    }
    // Kept entries of the current customer: (trigger, event time, is a candidate).
    let mut kept: Vec<(i32, i64, bool)> = Vec::new();
    let mut customer = None;
    let near = |a: i64, b: i64| (a - b).abs() <= conflict_window;
    for entry in &order {
        let (who, trigger_id, at) = match *entry {
            Ok(i) => (candidates[i].customer, candidates[i].trigger_id, candidates[i].occurred_at),
            Err(r) => (rivals[r].customer, rivals[r].trigger_id, rivals[r].occurred_at),
        };
        if customer != Some(who) {
            customer = Some(who);
            kept.clear();
            kept.extend(standing.get(&who).into_iter().flatten());
        }
        match *entry {
            Ok(i) => {
                if kept.iter().any(|&(t, when, _)| t != trigger_id && near(when, at)) {
                    outcomes[i] = Outcome::Suppressed(Reason::Conflict);
                } else {
                    kept.push((trigger_id, at, true));
                }
            }
            Err(r) if rivals[r].replaceable => {
                if kept.iter().any(|&(t, when, candidate)| candidate && t != trigger_id && near(when, at)) {
                    replaced[r] = true;
                } else {
                    kept.push((trigger_id, at, false));
                }
            }
            Err(_) => {} // already among the kept
        }
    }

    // Frequency caps, in the same rank order: each customer's messages sent or queued (those not
    // replaced), then the candidates fired so far.
    if !frequency_caps.is_empty() {
        let mut messages: HashMap<usize, Vec<(Channel, i64)>> = HashMap::new();
        for q in queued.iter().filter(|q| q.rival.is_none_or(|r| !replaced[r])) {
            messages.entry(q.customer).or_default().push((q.channel, q.at));
        }
        for entry in &order {
            let Ok(i) = *entry else { continue };
            if outcomes[i] != Outcome::Fired {
                continue;
            }
            let c = &candidates[i];
            let others = messages.entry(c.customer).or_default();
            if over_frequency_cap(frequency_caps, c.channel, c.send_at, others).is_some() {
                outcomes[i] = Outcome::Suppressed(Reason::Frequency);
            } else {
                others.push((c.channel, c.send_at));
            }
        }
    }

    Verdict { outcomes, replaced: (0..rivals.len()).filter(|&r| replaced[r]).collect() }
}

/// Whether one more fired decision at `t` would put more than `max` fired decisions in some
/// rolling window `(s - window, s]` that contains `t`, given the event times of the others,
/// earlier or later than `t`. The count in a window changes only where a decision enters it, so
/// the windows ending at `t` and at each later decision less than `window` after it cover all.
pub fn breaks_cap(t: i64, max: i64, window: i64, fired: &[i64]) -> bool {
    let later_ends = fired.iter().copied().filter(|&f| f > t && f < t.saturating_add(window));
    std::iter::once(t).chain(later_ends).any(|end| {
        let start = end.saturating_sub(window);
        let inside = fired.iter().filter(|&&f| f > start && f <= end).count() as i64;
        inside + 1 > max
    })
}

fn apply_caps(candidates: &[Candidate]) -> Vec<Outcome> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.customer, c.trigger_id, c.occurred_at, c.event_id)
    });
    let mut outcomes = vec![Outcome::Fired; candidates.len()];
    // Within one (customer, trigger) run of `order`, the event times that fired so far.
    let mut fired_times: Vec<i64> = Vec::new();
    let mut run_key = None;
    for &i in &order {
        let c = &candidates[i];
        if run_key != Some((c.customer, c.trigger_id)) {
            run_key = Some((c.customer, c.trigger_id));
            fired_times.clear();
        }
        if let Some(reason) = c.blocked {
            outcomes[i] = Outcome::Suppressed(reason);
            continue;
        }
        if let Some((max, window)) = c.cap {
            let mut fired = c.stored_fired.clone();
            fired.extend_from_slice(&fired_times);
            if breaks_cap(c.occurred_at, max, window, &fired) {
                outcomes[i] = Outcome::Suppressed(Reason::Cap);
                continue;
            }
        }
        fired_times.push(c.occurred_at);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: i64 = 3_600_000_000;

    #[test]
    fn consent_fails_closed_on_anything_but_a_boolean() {
        assert!(consents(&json!({}), "email", false));
        assert!(!consents(&json!({}), "sms", true));
        assert!(consents(&json!({"sms": true}), "sms", true));
        for odd in [json!("false"), json!(0), json!(null), json!("true"), json!(1), json!({})] {
            assert!(!consents(&json!({"email": odd.clone()}), "email", false), "{odd}");
            assert!(!consents(&json!({"all": odd.clone()}), "email", false), "{odd}");
        }
        assert!(!consents(&json!({"all": false}), "email", false));
        assert!(consents(&json!({"all": false, "email": true}), "email", false));
    }

    #[test]
    fn consent_keys_are_channels_in_any_case_or_all() {
        assert_eq!(consent_key(" Email "), Some("email"));
        assert_eq!(consent_key("ALL"), Some("all"));
        for unknown in ["", "carrier_pigeon", "e-mail", "emails"] {
            assert_eq!(consent_key(unknown), None, "{unknown:?}");
        }
        assert_eq!(consent_problem(&json!({"email": true, "all": false})), None);
        assert!(consent_problem(&json!({"Email": true})).is_some_and(|p| p.contains("unknown channel")));
        assert!(consent_problem(&json!({"sms": "no"})).is_some_and(|p| p.contains("true or false")));
        assert!(consent_problem(&json!([])).is_some());
    }

    const MINUTE: i64 = 60_000_000;

    /// Decides with a ten-minute conflict window, no stored state and no frequency caps.
    fn decide_now(candidates: &[Candidate]) -> Vec<Outcome> {
        decide(candidates, &[], &[], &[], 10 * MINUTE).outcomes
    }

    fn cand(customer: usize, trigger_id: i32, priority: i32, event_id: i64, at: i64) -> Candidate {
        Candidate {
            customer,
            trigger_id,
            priority,
            event_id,
            occurred_at: at,
            cap: None,
            stored_fired: Vec::new(),
            transactional: false,
            blocked: None,
            channel: Channel::Email,
            send_at: at,
        }
    }

    fn rival(trigger_id: i32, priority: i32, at: i64, replaceable: bool) -> Rival {
        Rival { customer: 0, trigger_id, priority, event_id: 100 + i64::from(trigger_id), occurred_at: at, replaceable }
    }

    #[test]
    fn a_better_candidate_replaces_a_pending_rival_but_not_one_already_sent() {
        let new = cand(0, 2, 9, 1, 5 * MINUTE);
        let v = decide(&[new.clone()], &[rival(1, 1, 0, true)], &[], &[], 10 * MINUTE);
        assert_eq!(v, Verdict { outcomes: vec![Outcome::Fired], replaced: vec![0] });
        let v = decide(&[new.clone()], &[rival(1, 1, 0, false)], &[], &[], 10 * MINUTE);
        assert_eq!(v, Verdict { outcomes: vec![Outcome::Suppressed(Reason::Conflict)], replaced: vec![] });
        // A better rival beats the candidate; a rival outside the window does not compete.
        let v = decide(&[new.clone()], &[rival(1, 10, 0, true)], &[], &[], 10 * MINUTE);
        assert_eq!(v.outcomes, vec![Outcome::Suppressed(Reason::Conflict)]);
        let v = decide(&[new], &[rival(1, 10, -6 * MINUTE, true)], &[], &[], 10 * MINUTE);
        assert_eq!(v, Verdict { outcomes: vec![Outcome::Fired], replaced: vec![] });
        // Equal priority: the lower trigger id wins, whichever statement it came in.
        let v = decide(&[cand(0, 1, 5, 1, 0)], &[rival(2, 5, 0, true)], &[], &[], 10 * MINUTE);
        assert_eq!(v, Verdict { outcomes: vec![Outcome::Fired], replaced: vec![0] });
        let v = decide(&[cand(0, 3, 5, 1, 0)], &[rival(2, 5, 0, true)], &[], &[], 10 * MINUTE);
        assert_eq!(v.outcomes, vec![Outcome::Suppressed(Reason::Conflict)]);
    }

    #[test]
    fn transactional_candidates_neither_compete_nor_count() {
        let receipt = Candidate { transactional: true, ..cand(0, 1, 0, 1, 0) };
        let promo = cand(0, 2, 9, 1, 0);
        let caps = [FrequencyCap { channel: None, max: 1, per_micros: 60 * MINUTE }];
        let v = decide(&[receipt.clone(), promo.clone()], &[rival(3, 99, 0, false)], &[], &caps, 10 * MINUTE);
        assert_eq!(v.outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Conflict)]);
        let v = decide(&[receipt, promo], &[], &[], &caps, 10 * MINUTE);
        assert_eq!(v.outcomes, vec![Outcome::Fired, Outcome::Fired]);
    }

    #[test]
    fn frequency_caps_count_queued_sent_and_earlier_candidates_within_the_window() {
        let day = 24 * 60 * MINUTE;
        let caps = [
            FrequencyCap { channel: None, max: 3, per_micros: day },
            FrequencyCap { channel: Some(Channel::Sms), max: 1, per_micros: day },
        ];
        let queued = |at, channel| Queued { customer: 0, channel, at, rival: None };
        let at = |t: i64, trigger_id, channel| Candidate { channel, send_at: t, ..cand(0, trigger_id, 0, t, t) };
        // Two emails already out in the last day; a third fits; a fourth does not.
        let history = [queued(-day + 2, Channel::Email), queued(-60 * MINUTE, Channel::Email)];
        let v = decide(&[at(0, 1, Channel::Email), at(1, 2, Channel::Email)], &[], &history, &caps, 0);
        assert_eq!(v.outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Frequency)]);
        // Exactly one window later the oldest no longer counts.
        let history = [queued(-day, Channel::Email), queued(-60 * MINUTE, Channel::Email)];
        let v = decide(&[at(0, 1, Channel::Email), at(1, 2, Channel::Email)], &[], &history, &caps, 0);
        assert_eq!(v.outcomes, vec![Outcome::Fired, Outcome::Fired]);
        // The per-channel cap: one SMS a day, while email still has room.
        let v = decide(&[at(0, 1, Channel::Sms), at(1, 2, Channel::Sms), at(2, 3, Channel::Email)], &[], &[], &caps, 0);
        assert_eq!(v.outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Frequency), Outcome::Fired]);
        // The higher priority takes the last slot; a queued message due later counts too.
        let high = Candidate { priority: 9, ..at(5, 2, Channel::Email) };
        let later = [queued(3 * 60 * MINUTE, Channel::Email), queued(4 * 60 * MINUTE, Channel::Email)];
        let v = decide(&[at(0, 1, Channel::Email), high], &[], &later, &caps, 0);
        assert_eq!(v.outcomes, vec![Outcome::Suppressed(Reason::Frequency), Outcome::Fired]);
    }

    #[test]
    fn a_channel_is_refused_for_the_suppression_list_or_for_marketing_without_consent() {
        let listed = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = serde_json::json!({"email": false});
        assert_eq!(refusal("email", &listed(&["sms"]), &out, false, true), Some(Reason::Consent));
        assert_eq!(refusal("email", &listed(&["email"]), &out, false, true), Some(Reason::Suppression));
        assert_eq!(refusal("push", &listed(&["all"]), &serde_json::json!({}), false, false), Some(Reason::Suppression));
        // Transactional messages need no consent; an opt-in channel needs a yes for marketing.
        assert_eq!(refusal("email", &[], &out, false, false), None);
        assert_eq!(refusal("sms", &[], &serde_json::json!({}), true, true), Some(Reason::Consent));
        assert_eq!(refusal("sms", &[], &serde_json::json!({"sms": true}), true, true), None);
    }

    #[test]
    fn the_frequency_rule_counts_both_sides_of_the_send_time_and_names_the_cap() {
        let hour = 60 * MINUTE;
        let caps = [
            FrequencyCap { channel: Some(Channel::Push), max: 1, per_micros: 90 * MINUTE },
            FrequencyCap { channel: None, max: 2, per_micros: 6 * hour },
        ];
        // One push 80 minutes later breaks the push cap; 90 minutes later does not.
        assert_eq!(over_frequency_cap(&caps, Channel::Push, 0, &[(Channel::Push, 80 * MINUTE)]), Some(&caps[0]));
        assert_eq!(over_frequency_cap(&caps, Channel::Push, 0, &[(Channel::Push, 90 * MINUTE)]), None);
        // Other channels count toward the cap on all channels only.
        let others = [(Channel::Email, -5 * hour), (Channel::Sms, 5 * hour)];
        assert_eq!(over_frequency_cap(&caps, Channel::Push, 0, &others), Some(&caps[1]));
        assert_eq!(over_frequency_cap(&caps, Channel::Push, 0, &others[..1]), None);
        assert_eq!(caps[0].describe(), "frequency cap: 1 messages per 90 minutes on push");
        assert_eq!(caps[1].describe(), "frequency cap: 2 messages per 6 hours");
        let odd = FrequencyCap { channel: None, max: 1, per_micros: 1_500_000 };
        assert_eq!(odd.describe(), "frequency cap: 1 messages per 1500000 microseconds");
    }

    #[test]
    fn a_replaced_rival_frees_its_frequency_slot() {
        let caps = [FrequencyCap { channel: None, max: 1, per_micros: 60 * MINUTE }];
        let queued = [Queued { customer: 0, channel: Channel::Email, at: 0, rival: Some(0) }];
        let v = decide(&[cand(0, 2, 9, 1, MINUTE)], &[rival(1, 1, 0, true)], &queued, &caps, 10 * MINUTE);
        assert_eq!(v, Verdict { outcomes: vec![Outcome::Fired], replaced: vec![0] });
    }

    #[test]
    fn a_blocked_candidate_is_suppressed_with_its_reason_and_does_not_compete() {
        let blocked = Candidate { blocked: Some(Reason::Consent), ..cand(0, 1, 9, 1, 0) };
        assert_eq!(
            decide_now(&[blocked, cand(0, 2, 1, 1, 0)]),
            vec![Outcome::Suppressed(Reason::Consent), Outcome::Fired]
        );
    }

    #[test]
    fn consent_per_channel_overrides_all_and_opt_in_channels_need_a_yes() {
        use serde_json::json;
        assert!(consents(&json!({}), "email", false));
        assert!(!consents(&json!({}), "sms", true));
        assert!(!consents(&json!({"email": false}), "email", false));
        assert!(consents(&json!({"email": false}), "push", false));
        assert!(!consents(&json!({"all": false}), "push", false));
        assert!(consents(&json!({"all": false, "sms": true}), "sms", true));
        assert!(consents(&json!({"all": true}), "sms", true));
        assert!(!consents(&json!({"sms": "maybe"}), "sms", false), "a non-boolean answer is no consent (fails closed)");
    }

    #[test]
    fn variants_are_stable_and_follow_their_weights() {
        let mut counts = [0usize; 2];
        for i in 0..100_000 {
            counts[variant_index("cart", &format!("c{i}"), &[1.0, 3.0])] += 1;
        }
        // 25% of 100,000: standard deviation ~137; +-800 is more than 5 sigma.
        assert!((24_200..=25_800).contains(&counts[0]), "{counts:?}");
        assert_eq!(variant_index("cart", "c7", &[1.0, 1.0]), variant_index("cart", "c7", &[1.0, 1.0]));
        // Independent of the holdout draw: among control customers, variants keep their shares.
        let control: Vec<String> =
            (0..20_000).map(|i| format!("c{i}")).filter(|c| in_holdout("cart", c, 0.5)).collect();
        let first = control.iter().filter(|c| variant_index("cart", c, &[1.0, 1.0]) == 0).count();
        assert!((first as f64 / control.len() as f64 - 0.5).abs() < 0.03, "{first} of {}", control.len());
    }

    #[test]
    fn cap_counts_stored_and_earlier_in_statement_in_event_time_order() {
        // One stored fired decision at -0.25h, which the history read returns to the candidates
        // whose two-sided range holds it.
        let capped = |event_id, at, stored: &[i64]| Candidate {
            cap: Some((2, HOUR)),
            stored_fired: stored.to_vec(),
            ..cand(0, 1, 0, event_id, at)
        };
        let stored = -HOUR / 4;
        // Given out of order: the later event (id 1) is decided after the two earlier ones.
        let outcomes =
            decide_now(&[capped(1, 3 * HOUR / 2, &[]), capped(2, 0, &[stored]), capped(3, HOUR / 2, &[stored])]);
        assert_eq!(outcomes[1], Outcome::Fired); // (-1h, 0] holds the stored one and this: 2
        assert_eq!(outcomes[2], Outcome::Suppressed(Reason::Cap)); // (-0.5h, 0.5h] would hold 3
        assert_eq!(outcomes[0], Outcome::Fired); // window (0.5h, 1.5h]: event at 0 no longer counts
    }

    #[test]
    fn cap_counts_stored_decisions_later_in_event_time() {
        // A late event, decided after one an hour later in event time fired: a cap of 1 per day
        // holds in both directions.
        let late = Candidate { cap: Some((1, 24 * HOUR)), stored_fired: vec![HOUR], ..cand(0, 1, 0, 1, 0) };
        assert_eq!(decide_now(&[late]), vec![Outcome::Suppressed(Reason::Cap)]);
        // With max 2, only decisions that can share one window with the candidate count together:
        // at -0.9h and +0.9h (window 1h) they never do, at -0.4h and +0.4h they do.
        let between =
            |stored: Vec<i64>| Candidate { cap: Some((2, HOUR)), stored_fired: stored, ..cand(0, 1, 0, 1, 0) };
        let apart = 9 * HOUR / 10;
        assert_eq!(decide_now(&[between(vec![-apart, apart])]), vec![Outcome::Fired]);
        let close = 4 * HOUR / 10;
        assert_eq!(decide_now(&[between(vec![-close, close])]), vec![Outcome::Suppressed(Reason::Cap)]);
        assert_eq!(decide_now(&[between(vec![close, 2 * close])]), vec![Outcome::Suppressed(Reason::Cap)]);
    }

    #[test]
    fn breaks_cap_matches_a_brute_force_over_every_window() {
        // Every window (end - w, end] containing t, over a fine grid of ends, against breaks_cap.
        let w = 10;
        for mask in 0u32..(1 << 8) {
            let fired: Vec<i64> = (0..8).filter(|b| mask & (1 << b) != 0).map(|b| i64::from(b) * 3 - 10).collect();
            for max in 1..4 {
                for t in -12..12 {
                    let brute = (t..t + w)
                        .any(|end| fired.iter().filter(|&&f| f > end - w && f <= end).count() as i64 + 1 > max);
                    assert_eq!(breaks_cap(t, max, w, &fired), brute, "fired {fired:?} max {max} t {t}");
                }
            }
        }
    }

    #[test]
    fn window_edge_is_exclusive_at_the_start() {
        let capped = |event_id, at| Candidate { cap: Some((1, HOUR)), ..cand(0, 1, 0, event_id, at) };
        let outcomes = decide_now(&[capped(1, 0), capped(2, HOUR)]);
        assert_eq!(outcomes, vec![Outcome::Fired, Outcome::Fired]);
        let outcomes = decide_now(&[capped(1, 0), capped(2, HOUR - 1)]);
        assert_eq!(outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Cap)]);
    }

    #[test]
    fn highest_priority_wins_ties_go_to_the_older_trigger() {
        let outcomes =
            decide_now(&[cand(0, 1, 5, 1, 0), cand(0, 2, 9, 1, 0), cand(1, 3, 1, 2, 0), cand(1, 4, 1, 2, 0)]);
        assert_eq!(
            outcomes,
            vec![
                Outcome::Suppressed(Reason::Conflict),
                Outcome::Fired,
                Outcome::Fired,
                Outcome::Suppressed(Reason::Conflict)
            ]
        );
    }

    #[test]
    fn a_capped_high_priority_trigger_does_not_block_a_lower_one() {
        let high = Candidate { cap: Some((1, HOUR)), stored_fired: vec![-1], ..cand(0, 1, 9, 1, 0) };
        let outcomes = decide_now(&[high, cand(0, 2, 1, 1, 0)]);
        assert_eq!(outcomes, vec![Outcome::Suppressed(Reason::Cap), Outcome::Fired]);
    }

    #[test]
    fn the_same_trigger_fires_for_each_event_of_a_customer() {
        assert_eq!(decide_now(&[cand(0, 1, 0, 1, 0), cand(0, 1, 0, 2, 1)]), vec![Outcome::Fired, Outcome::Fired]);
    }

    #[test]
    fn holdout_is_stable_and_takes_its_share() {
        let held = (0..100_000).filter(|i| in_holdout("welcome", &format!("c{i}"), 0.1)).count();
        // 10% of 100,000: standard deviation ~95, so +-600 is more than 6 sigma.
        assert!((9_400..=10_600).contains(&held), "{held}");
        assert_eq!(in_holdout("welcome", "c42", 0.1), in_holdout("welcome", "c42", 0.1));
        assert!((0..1000).all(|i| !in_holdout("welcome", &format!("c{i}"), 0.0)));
        // A different trigger draws a different group.
        let both = (0..10_000)
            .filter(|i| in_holdout("a", &format!("c{i}"), 0.5) == in_holdout("b", &format!("c{i}"), 0.5))
            .count();
        assert!((4_500..=5_500).contains(&both), "{both}");
    }

    #[test]
    fn conflicts_only_compete_within_the_window() {
        // low (t=0) and high (t=5min) compete; low again at t=2h has nothing better near it.
        let outcomes = decide_now(&[cand(0, 1, 1, 1, 0), cand(0, 2, 9, 2, 300_000_000), cand(0, 1, 1, 3, 2 * HOUR)]);
        assert_eq!(outcomes, vec![Outcome::Suppressed(Reason::Conflict), Outcome::Fired, Outcome::Fired]);
    }

    #[test]
    fn a_suppressed_candidate_does_not_suppress_others() {
        // a (prio 9, t=0) beats b (prio 5, t=8min); b would have beaten c (prio 1, t=16min), but b
        // is not sent, and a is 16 minutes from c: c goes out.
        let outcomes = decide_now(&[cand(0, 1, 9, 1, 0), cand(0, 2, 5, 2, 480_000_000), cand(0, 3, 1, 3, 960_000_000)]);
        assert_eq!(outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Conflict), Outcome::Fired]);
    }
}
