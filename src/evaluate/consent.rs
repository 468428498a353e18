//! The SQL side of consent: the channel names `subscribe` / `unsubscribe` events may carry, and
//! the CHECK on `engage.profiles.consent`. The rules themselves are `policy::consent_key` and
//! `policy::consent_problem`, so the channel list is defined once (`rule::Channel`).

use crate::policy;
use crate::sql_error;
use pgrx::prelude::*;

/// The consent key for a channel name as an app wrote it (`'Email'` gives `email`, `'all'` gives
/// `all`); an unknown name is an ERROR.
#[pg_extern(immutable, parallel_safe, strict)]
fn consent_key(channel: &str) -> &'static str {
    policy::consent_key(channel).unwrap_or_else(|| {
        sql_error::invalid_argument(
            format!("unknown channel \"{}\" for consent", crate::rule::error::excerpt(channel)),
            "The channels are email, sms, whatsapp, push and webhook; \"all\" (or no channel) means every channel.",
        )
    })
}

/// The CHECK on engage.profiles.consent: true, or an ERROR naming the bad key or value.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_consent(consent: crate::jsonb::Strict) -> bool {
    let problem = match &consent.value {
        Ok(value) => policy::consent_problem(value),
        Err(unreadable) => Some(format!("profiles.consent at {}: {}", unreadable.path, unreadable.problem)),
    };
    if let Some(problem) = problem {
        sql_error::invalid_argument(
            problem,
            "Consent answers are {\"email\": true}, {\"sms\": false} or {\"all\": false}.",
        );
    }
    true
}
