//! Instants on the two clocks pg_engage meets. PostgreSQL's `timestamptz` counts microseconds
//! from 2000-01-01 UTC: the insert path keeps event times that way, as their datums come, in plain
//! `i64`s. chrono and the RFC 3339 times in JSON count from the Unix epoch: such an instant is a
//! [`UnixMicros`], and a PostgreSQL time becomes one only through [`UnixMicros::from_pg`], so the
//! two counts cannot be mixed up unnoticed.

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// An instant as microseconds since the Unix epoch (1970-01-01 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMicros(i64);

impl UnixMicros {
    /// A `timestamptz` value (microseconds since 2000-01-01 UTC).
    pub fn from_pg(pg_micros: i64) -> UnixMicros {
        UnixMicros(pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS))
    }

    /// As a `timestamptz` value.
    pub fn to_pg(self) -> i64 {
        self.0.saturating_sub(PG_EPOCH_OFFSET_MICROS)
    }

    pub fn from_chrono<Tz: chrono::TimeZone>(t: &chrono::DateTime<Tz>) -> UnixMicros {
        UnixMicros(t.timestamp_micros())
    }

    /// As a chrono instant; None outside chrono's range.
    pub fn to_chrono(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_micros(self.0)
    }

    /// An RFC 3339 timestamp ("2026-06-01T12:00:00Z", "2026-06-01T14:00:00+02:00").
    pub fn parse_rfc3339(text: &str) -> Option<UnixMicros> {
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| UnixMicros::from_chrono(&t))
    }

    /// This instant moved `micros` earlier.
    pub fn saturating_sub(self, micros: i64) -> UnixMicros {
        UnixMicros(self.0.saturating_sub(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_epochs_are_thirty_years_apart_and_round_trip() {
        assert_eq!(UnixMicros::from_pg(0), UnixMicros::parse_rfc3339("2000-01-01T00:00:00Z").unwrap());
        let t = UnixMicros::parse_rfc3339("2026-06-01T14:00:00+02:00").unwrap();
        assert_eq!(UnixMicros::from_pg(t.to_pg()), t);
        assert_eq!(t.to_chrono().map(|c| c.to_rfc3339()), Some("2026-06-01T12:00:00+00:00".to_string()));
        assert_eq!(UnixMicros::from_pg(i64::MAX).to_pg(), i64::MAX - PG_EPOCH_OFFSET_MICROS);
    }
}
