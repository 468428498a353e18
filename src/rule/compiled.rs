//! The compiled form of a definition: what SQL reads of a trigger (the scheduler's occasions,
//! the analytics' goals and variants, the priority), with every default filled in, produced
//! from the parsed [`Definition`] only. `engage.triggers.compiled` is this, generated from
//! `name` and `definition` by `engage.compiled_trigger`, so SQL never reads the definition
//! JSON itself and a definition has one meaning.
//!
//! Durations are microseconds (SQL: `n * interval '1 microsecond'`), property paths are
//! arrays of keys (`#>` paths), local times are `HH:MM:SS`.

use super::occasion::{self, Measure, Occasion};
use super::{Category, Definition};
use serde_json::{json, Value};

/// The compiled form of the trigger `name` with definition `d`.
pub fn compile(name: &str, d: &Definition) -> Value {
    json!({
        "priority": d.priority,
        "category": d.category.as_str(),
        "transactional": d.category == Category::Transactional,
        // The events an occasion fires through.
        "event_name": occasion::event_name_for(name),
        "occasion": d.occasion.as_ref().map(|o| occasion_form(o, d.backfill)),
        "goal": d.goal.as_ref().map(|g| json!({"event": g.event, "within_micros": g.within_micros, "value": g.value})),
        "variants": d.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
    })
}

fn occasion_form(o: &Occasion, backfill: bool) -> Value {
    let time = |t: &chrono::NaiveTime| t.format("%H:%M:%S").to_string();
    match o {
        Occasion::Inactive { event, for_micros } => {
            json!({"kind": "inactive", "event": event, "for_micros": for_micros, "backfill": backfill})
        }
        Occasion::Anniversary { date, at } => {
            json!({"kind": "anniversary", "date": date, "at": time(at), "offset_micros": 0, "yearly": true})
        }
        Occasion::Date { date, offset_micros, at } => {
            json!({"kind": "date", "date": date, "at": time(at), "offset_micros": offset_micros, "yearly": false})
        }
        Occasion::Crosses { measure, level, upward } => {
            let (profile, event, sum, within_micros) = match measure {
                Measure::Profile(path) => (Some(path), None, None, None),
                Measure::Sum { event, value, within_micros } => (None, Some(event), Some(value), Some(within_micros)),
            };
            json!({"kind": "crosses", "profile": profile, "event": event, "sum": sum,
                   "within_micros": within_micros, "level": number(*level), "upward": upward})
        }
        Occasion::Predicted { event, threshold, min_purchases } => json!({
            "kind": "predicted", "event": event, "p_alive_below": threshold, "min_purchases": min_purchases,
            "backfill": backfill
        }),
    }
}

/// A whole number as an integer (a level of 80 reads 80, not 80.0), else the float.
fn number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: integers up to it are exact in an f64
    if x.fract() == 0.0 && x.abs() <= EXACT {
        json!(x as i64)
    } else {
        json!(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::parse;

    fn compiled(definition: Value) -> Value {
        compile("t1", &parse(&definition).unwrap_or_else(|e| panic!("{definition}: {e:?}")))
    }

    #[test]
    fn every_default_is_filled_in() {
        let c = compiled(json!({"event": "signup", "action": {"channel": "email", "template": "w"}}));
        assert_eq!(
            c,
            json!({"priority": 0, "category": "marketing", "transactional": false, "event_name": "trigger:t1",
                   "occasion": null, "goal": null, "variants": []})
        );
        let c = compiled(json!({"anniversary": {"date": "birthday"}, "action": {"channel": "webhook"}}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "anniversary", "date": ["birthday"], "at": "09:00:00", "offset_micros": 0, "yearly": true})
        );
        let c = compiled(json!({"predicted": {"p_alive_below": 0.3}, "action": {"channel": "webhook"}}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "predicted", "event": "purchase", "p_alive_below": 0.3, "min_purchases": 1, "backfill": false})
        );
    }

    #[test]
    fn durations_paths_and_times_are_normalised() {
        let c = compiled(json!({"date": {"date": "plan.renews", "before": "7d", "at": "18:30"},
                                "action": {"channel": "webhook"}, "priority": 3, "category": "transactional"}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "date", "date": ["plan", "renews"], "at": "18:30:00",
                   "offset_micros": -7 * 86_400_000_000_i64, "yearly": false})
        );
        assert_eq!((c["priority"].clone(), c["transactional"].clone()), (json!(3), json!(true)));
        let c = compiled(json!({"inactive": {"event": "login", "for": "1h 30m"}, "backfill": true,
                                "action": {"channel": "webhook"}}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "inactive", "event": "login", "for_micros": 5_400_000_000_i64, "backfill": true})
        );
        let c =
            compiled(json!({"crosses": {"event": "order", "sum": "total.amount", "within": "30d", "at_least": 500},
                                "action": {"channel": "webhook"}}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "crosses", "profile": null, "event": "order", "sum": ["total", "amount"],
                   "within_micros": 30 * 86_400_000_000_i64, "level": 500, "upward": true})
        );
        let c = compiled(json!({"event": "cart", "action": {"channel": "webhook"},
                                "goal": {"event": "purchase", "within": "2d", "value": "revenue"},
                                "variants": [{"name": "a"}, {"name": "b", "wait": "1h"}]}));
        assert_eq!(
            c["goal"],
            json!({"event": "purchase", "within_micros": 2 * 86_400_000_000_i64, "value": ["revenue"]})
        );
        assert_eq!(c["variants"], json!(["a", "b"]));
        let c = compiled(json!({"crosses": {"profile": "score", "below": 0.5}, "action": {"channel": "webhook"}}));
        assert_eq!(
            c["occasion"],
            json!({"kind": "crosses", "profile": ["score"], "event": null, "sum": null, "within_micros": null,
                   "level": 0.5, "upward": false})
        );
    }
}
