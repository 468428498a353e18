//! Durations in trigger definitions: `"90s"`, `"30m"`, `"2h"`, `"7d"`, `"1w"`, `"1h 30m"`.
//!
//! Parsing is delegated to the `humantime` crate (a small, widely used parser for exactly this
//! notation); this module only adds the rules of the trigger language: a string, and positive.

use super::error::{show, DefinitionError};
use serde_json::Value;

/// The longest duration the language accepts: 3650 days.
pub const MAX_MICROS: i64 = 3650 * 86_400 * 1_000_000;
const MAX_TEXT: &str = "3650d";
const EXAMPLES: &str = r#"a duration like "30m", "2h" or "7d""#;

/// Parses a positive duration at `path`, in microseconds (PostgreSQL's timestamp unit).
pub fn parse(value: &Value, path: &str) -> Result<i64, DefinitionError> {
    let hint = r#"durations are a number and a unit (s, m, h, d, w), optionally repeated: "90s", "1h 30m", "7d""#;
    let Value::String(text) = value else {
        return Err(DefinitionError::new(path, format!("expected {EXAMPLES}, got {}", show(value))).with_hint(hint));
    };
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|_| DefinitionError::new(path, format!("expected {EXAMPLES}, got {}", show(value))).with_hint(hint))?;
    let micros = i64::try_from(parsed.as_micros()).unwrap_or(i64::MAX);
    if micros > MAX_MICROS {
        return Err(DefinitionError::new(path, format!("duration {} is longer than {MAX_TEXT}", show(value)))
            .with_hint(
            "durations are at most 3650d (about ten years), so event time plus any duration stays a valid timestamp",
        ));
    }
    if micros <= 0 {
        return Err(
            DefinitionError::new(path, format!("duration must be positive, got {}", show(value))).with_hint(hint)
        );
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse(&json!("90s"), "$").unwrap(), 90_000_000);
        assert_eq!(parse(&json!("30m"), "$").unwrap(), 1_800_000_000);
        assert_eq!(parse(&json!("2h"), "$").unwrap(), 7_200_000_000);
        assert_eq!(parse(&json!("7d"), "$").unwrap(), 604_800_000_000);
        assert_eq!(parse(&json!("1w"), "$").unwrap(), 604_800_000_000);
        assert_eq!(parse(&json!("1h 30m"), "$").unwrap(), 5_400_000_000);
    }

    #[test]
    fn accepts_up_to_ten_years_and_refuses_longer() {
        assert_eq!(parse(&json!("3650d"), "$").unwrap(), MAX_MICROS);
        for long in ["3651d", "106751990d", "99999999d"] {
            let err = parse(&json!(long), "$.wait").unwrap_err();
            assert!(err.problem.contains("longer than 3650d"), "{long}: {err}");
        }
    }

    #[test]
    fn rejects_words_negatives_zero_and_non_strings() {
        for bad in [json!("soon"), json!("-2h"), json!("0s"), json!(""), json!(3600), json!(null)] {
            let err = parse(&bad, "$.cap.per").unwrap_err();
            assert_eq!(err.path, "$.cap.per");
            assert!(err.problem.contains("duration"), "{err}");
        }
    }
}
