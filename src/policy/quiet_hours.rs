//! Quiet hours, in the customer's own IANA time zone: a message due inside them is deferred to
//! their end, not dropped. A window whose start is after its end crosses midnight (21:00–08:00).

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A daily window of local time, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// Parses `HH:MM[:SS[.ffffff]]` bounds, as PostgreSQL prints a `time`.
    pub fn parse(start: &str, end: &str) -> Option<QuietHours> {
        let time = |t: &str| t.parse::<NaiveTime>().or_else(|_| NaiveTime::parse_from_str(t, "%H:%M")).ok();
        let (start, end) = (time(start)?, time(end)?);
        (start != end).then_some(QuietHours { start, end })
    }

    fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a message that is due `now` may go out for a customer in `zone`: None if now is
    /// outside quiet hours, else the end of these quiet hours (the next local `end`). If that local
    /// time does not exist on the day (a DST gap), the first valid instant after it.
    pub fn deferral(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&zone);
        if !self.contains(local.time()) {
            return None;
        }
        let mut day = local.date_naive();
        if local.time() >= self.end {
            day = day.succ_opt()?;
        }
        let mut wanted = day.and_time(self.end);
        for _ in 0..4 {
            if let Some(instant) = zone.from_local_datetime(&wanted).earliest() {
                return Some(instant.with_timezone(&Utc));
            }
            wanted += Duration::minutes(30); // inside a DST gap: the clock jumps, try a bit later
        }
        None
    }
}

/// The customer's zone, or `default` when the profile has none or an unknown name.
pub fn zone(name: Option<&str>, default: &str) -> Tz {
    name.and_then(|n| n.parse::<Tz>().ok()).or_else(|| default.parse::<Tz>().ok()).unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_window_across_midnight_defers_to_the_local_morning() {
        let q = QuietHours::parse("21:00:00", "08:00").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 22:30 in Berlin (UTC+1 in January) -> 08:00 Berlin next day = 07:00 UTC.
        assert_eq!(q.deferral(utc("2026-01-10T21:30:00Z"), berlin), Some(utc("2026-01-11T07:00:00Z")));
        // 02:00 Berlin -> 08:00 the same day.
        assert_eq!(q.deferral(utc("2026-01-10T01:00:00Z"), berlin), Some(utc("2026-01-10T07:00:00Z")));
        // 12:00 Berlin: not quiet.
        assert_eq!(q.deferral(utc("2026-01-10T11:00:00Z"), berlin), None);
        // The same instant is quiet in Tokyo (20:00 UTC = 05:00 JST) but not in New York (15:00).
        assert!(q.deferral(utc("2026-01-10T20:00:00Z"), "Asia/Tokyo".parse().unwrap()).is_some());
        assert!(q.deferral(utc("2026-01-10T20:00:00Z"), "America/New_York".parse().unwrap()).is_none());
    }

    #[test]
    fn bounds_parse_as_postgresql_prints_them() {
        let q = QuietHours::parse("19:38:05.123456", "21:00").unwrap();
        assert_eq!(q.start, NaiveTime::from_hms_micro_opt(19, 38, 5, 123_456).unwrap());
        assert_eq!(q.end, NaiveTime::from_hms_opt(21, 0, 0).unwrap());
        assert_eq!(QuietHours::parse("8am", "09:00"), None);
    }

    #[test]
    fn window_edges_start_inclusive_end_exclusive() {
        let q = QuietHours::parse("21:00", "08:00").unwrap();
        assert!(q.deferral(utc("2026-01-10T21:00:00Z"), Tz::UTC).is_some());
        assert!(q.deferral(utc("2026-01-10T08:00:00Z"), Tz::UTC).is_none());
        assert!(q.deferral(utc("2026-01-10T07:59:59Z"), Tz::UTC).is_some());
    }

    #[test]
    fn across_a_dst_switch_the_morning_is_local() {
        let q = QuietHours::parse("22:00", "08:00").unwrap();
        let ny: Tz = "America/New_York".parse().unwrap();
        // US clocks spring forward on 2026-03-08 at 02:00. 23:00 EST on the 7th (04:00 UTC on the
        // 8th) -> 08:00 EDT on the 8th = 12:00 UTC (not 13:00, as a fixed -5h offset would say).
        assert_eq!(q.deferral(utc("2026-03-08T04:00:00Z"), ny), Some(utc("2026-03-08T12:00:00Z")));
        // A window ending inside the gap (02:30 does not exist that night) ends at the first valid time.
        let gap = QuietHours::parse("01:00", "02:30").unwrap();
        assert_eq!(gap.deferral(utc("2026-03-08T06:30:00Z"), ny), Some(utc("2026-03-08T07:00:00Z")));
    }

    #[test]
    fn unknown_zones_fall_back_to_the_default() {
        assert_eq!(zone(Some("Mars/Olympus"), "Europe/Paris"), "Europe/Paris".parse::<Tz>().unwrap());
        assert_eq!(zone(None, "nonsense"), Tz::UTC);
        assert_eq!(zone(Some("Asia/Kolkata"), "UTC"), "Asia/Kolkata".parse::<Tz>().unwrap());
    }
}
