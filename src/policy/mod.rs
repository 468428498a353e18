//! Policy: which matching candidates of one statement fire, and why the others do not.
//!
//! Pure arithmetic over candidates; the caller supplies, for each capped candidate, how many
//! fired decisions already exist in its window (read from the database under a per-customer
//! lock). No SPI here.

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
    Suppressed(Reason),
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
/// 2. Conflicts, per customer: of the triggers that still fire, only the highest priority keeps
///    firing (ties: lower trigger id); the others are suppressed as conflicts.
pub fn decide(candidates: &[Candidate]) -> Vec<Outcome> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.customer, c.trigger_id, c.occurred_at, c.event_id)
    });

    let mut outcomes = vec![Outcome::Fired; candidates.len()];
    // Caps: within one (customer, trigger) run of `order`, remember the times that fired.
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

    // Conflicts: the winning trigger per customer among candidates that survived the caps.
    let mut winner: Vec<Option<(i32, i32)>> = Vec::new(); // per customer: (priority, trigger id)
    for (i, c) in candidates.iter().enumerate() {
        if outcomes[i] != Outcome::Fired {
            continue;
        }
        if winner.len() <= c.customer {
            winner.resize(c.customer + 1, None);
        }
        let better = match winner[c.customer] {
            None => true,
            Some((p, id)) => c.priority > p || (c.priority == p && c.trigger_id < id),
        };
        if better {
            winner[c.customer] = Some((c.priority, c.trigger_id));
        }
    }
    for (i, c) in candidates.iter().enumerate() {
        if outcomes[i] == Outcome::Fired && winner[c.customer].map(|(_, id)| id) != Some(c.trigger_id) {
            outcomes[i] = Outcome::Suppressed(Reason::Conflict);
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn cand(customer: usize, trigger_id: i32, priority: i32, event_id: i64, at: i64) -> Candidate {
        Candidate { customer, trigger_id, priority, event_id, occurred_at: at, cap: None, prior_fired: 0 }
    }

    #[test]
    fn cap_counts_stored_and_earlier_in_statement_in_event_time_order() {
        let capped = |event_id, at, prior| Candidate { cap: Some((2, HOUR)), prior_fired: prior, ..cand(0, 1, 0, event_id, at) };
        // Given out of order: the later event (id 1) is decided after the two earlier ones.
        let outcomes = decide(&[capped(1, 3 * HOUR / 2, 0), capped(2, 0, 1), capped(3, HOUR / 2, 1)]);
        assert_eq!(outcomes[1], Outcome::Fired); // 1 stored + 0 earlier < 2
        assert_eq!(outcomes[2], Outcome::Suppressed(Reason::Cap)); // the same stored one + 1 earlier
        assert_eq!(outcomes[0], Outcome::Fired); // window (0.5h, 1.5h]: event at 0 no longer counts
    }

    #[test]
    fn window_edge_is_exclusive_at_the_start() {
        let capped = |event_id, at| Candidate { cap: Some((1, HOUR)), ..cand(0, 1, 0, event_id, at) };
        let outcomes = decide(&[capped(1, 0), capped(2, HOUR)]);
        assert_eq!(outcomes, vec![Outcome::Fired, Outcome::Fired]);
        let outcomes = decide(&[capped(1, 0), capped(2, HOUR - 1)]);
        assert_eq!(outcomes, vec![Outcome::Fired, Outcome::Suppressed(Reason::Cap)]);
    }

    #[test]
    fn highest_priority_wins_ties_go_to_the_older_trigger() {
        let outcomes = decide(&[cand(0, 1, 5, 1, 0), cand(0, 2, 9, 1, 0), cand(1, 3, 1, 2, 0), cand(1, 4, 1, 2, 0)]);
        assert_eq!(
            outcomes,
            vec![Outcome::Suppressed(Reason::Conflict), Outcome::Fired, Outcome::Fired, Outcome::Suppressed(Reason::Conflict)]
        );
    }

    #[test]
    fn a_capped_high_priority_trigger_does_not_block_a_lower_one() {
        let high = Candidate { cap: Some((1, HOUR)), prior_fired: 1, ..cand(0, 1, 9, 1, 0) };
        let outcomes = decide(&[high, cand(0, 2, 1, 1, 0)]);
        assert_eq!(outcomes, vec![Outcome::Suppressed(Reason::Cap), Outcome::Fired]);
    }

    #[test]
    fn the_same_trigger_fires_for_each_event_of_a_customer() {
        assert_eq!(decide(&[cand(0, 1, 0, 1, 0), cand(0, 1, 0, 2, 1)]), vec![Outcome::Fired, Outcome::Fired]);
    }
}
