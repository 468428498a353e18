//! Policy: which matching candidates of one statement fire, and why the others do not; holdout
//! groups; quiet hours (`quiet_hours`).
//!
//! Pure arithmetic over candidates; the caller supplies, for each capped candidate, how many
//! fired decisions already exist in its window (read from the database under a per-customer
//! lock). No SPI here.

pub mod quiet_hours;

/// Why a matching trigger did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The trigger's per-customer cap was reached in its window.
    Cap,
    /// A higher-priority trigger fired for the same customer in the same statement.
    Conflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Cap => "cap",
            Reason::Conflict => "conflict",
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

/// Whether a customer is in a trigger's control group: the first 8 bytes of
/// SHA-256("<trigger name>:<customer id>") as a fraction of 2^64, below `share`. A fixed, published
/// hash, so the same customer is in the same group in every session, release and replay.
pub fn in_holdout(trigger_name: &str, customer_id: &str, share: f64) -> bool {
    use sha2::{Digest, Sha256};
    if share <= 0.0 {
        return false;
    }
    let digest = Sha256::new()
        .chain_update(trigger_name.as_bytes())
        .chain_update(b":")
        .chain_update(customer_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0) < share
}

/// One (event, trigger) match, as the policy sees it.
#[derive(Debug, Clone, Copy)]
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
    /// Fired decisions already stored for this customer and trigger in `(occurred_at - window, occurred_at]`.
    pub prior_fired: i64,
}

/// Decides every candidate of a statement.
///
/// 1. Caps, per (customer, trigger), in event-time order: a candidate fires only if the stored
///    fired decisions in its window plus the ones fired earlier in this statement stay below max.
/// 2. Conflicts, per customer, among the candidates that passed their caps: in priority order
///    (ties: lower trigger id, then earlier event), a candidate fires unless a candidate of another
///    trigger already chosen for the same customer lies within `conflict_window` of event time;
///    then it is suppressed as a conflict. So the best message for a moment wins, and a lower one
///    still goes out when nothing better competes with it.
pub fn decide(candidates: &[Candidate], conflict_window: i64) -> Vec<Outcome> {
    let mut outcomes = apply_caps(candidates);

    let mut order: Vec<usize> = (0..candidates.len()).filter(|&i| outcomes[i] == Outcome::Fired).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.customer, std::cmp::Reverse(c.priority), c.trigger_id, c.occurred_at, c.event_id)
    });
    let mut chosen: Vec<usize> = Vec::new(); // of the current customer
    for (position, &i) in order.iter().enumerate() {
        let c = &candidates[i];
        if position > 0 && candidates[order[position - 1]].customer != c.customer {
            chosen.clear();
        }
        let beaten = chosen.iter().any(|&j| {
            let other = &candidates[j];
            other.trigger_id != c.trigger_id && (other.occurred_at - c.occurred_at).abs() <= conflict_window
        });
        if beaten {
            outcomes[i] = Outcome::Suppressed(Reason::Conflict);
        } else {
            chosen.push(i);
        }
    }
    outcomes
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
        if let Some((max, window)) = c.cap {
            let since = c.occurred_at.saturating_sub(window);
            let earlier = fired_times.iter().filter(|&&t| t > since && t <= c.occurred_at).count() as i64;
            if c.prior_fired + earlier >= max {
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

    const HOUR: i64 = 3_600_000_000;

    /// Decides with a ten-minute conflict window.
    fn decide_now(candidates: &[Candidate]) -> Vec<Outcome> {
        decide(candidates, 10 * 60_000_000)
    }

    fn cand(customer: usize, trigger_id: i32, priority: i32, event_id: i64, at: i64) -> Candidate {
        Candidate { customer, trigger_id, priority, event_id, occurred_at: at, cap: None, prior_fired: 0 }
    }

    #[test]
    fn cap_counts_stored_and_earlier_in_statement_in_event_time_order() {
        let capped =
            |event_id, at, prior| Candidate { cap: Some((2, HOUR)), prior_fired: prior, ..cand(0, 1, 0, event_id, at) };
        // Given out of order: the later event (id 1) is decided after the two earlier ones.
        let outcomes = decide_now(&[capped(1, 3 * HOUR / 2, 0), capped(2, 0, 1), capped(3, HOUR / 2, 1)]);
        assert_eq!(outcomes[1], Outcome::Fired); // 1 stored + 0 earlier < 2
        assert_eq!(outcomes[2], Outcome::Suppressed(Reason::Cap)); // the same stored one + 1 earlier
        assert_eq!(outcomes[0], Outcome::Fired); // window (0.5h, 1.5h]: event at 0 no longer counts
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
        let high = Candidate { cap: Some((1, HOUR)), prior_fired: 1, ..cand(0, 1, 9, 1, 0) };
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
