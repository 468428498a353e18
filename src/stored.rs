//! The value sets pg_engage stores as text: each is defined once in SQL, as a domain
//! (sql/schema.sql), and once here; a pg_test compares the lists (as it does engage.channel with
//! `rule::Channel` and engage.suppression_reason with `policy::Reason`). The insert path reads
//! and writes these values through the enums, never as string literals.

/// An enum of stored text values: `ALL`, `as_str`, `parse`.
macro_rules! stored_values {
    ($(#[$doc:meta])* $name:ident, domain $domain:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[doc = concat!("The values of the domain `", $domain, "`.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            #[cfg(any(test, feature = "pg_test"))]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

stored_values!(
    /// What a decision was (`engage.decisions.outcome`).
    StoredOutcome, domain "engage.decision_outcome" {
        Fired => "fired",
        HeldOut => "held_out",
        Suppressed => "suppressed",
    }
);

stored_values!(
    /// A queued message's category (`engage.outbox.category`): a trigger's own category, or a
    /// message about the customer to a team.
    MessageCategory, domain "engage.message_category" {
        Marketing => "marketing",
        Transactional => "transactional",
        Escalation => "escalation",
    }
);

stored_values!(
    /// Where a queued message stands (`engage.outbox.status`).
    MessageStatus, domain "engage.message_status" {
        Pending => "pending",
        Claimed => "claimed",
        Sent => "sent",
        Dead => "dead",
        Cancelled => "cancelled",
        Suppressed => "suppressed",
    }
);

impl From<crate::rule::Category> for MessageCategory {
    fn from(category: crate::rule::Category) -> MessageCategory {
        match category {
            crate::rule::Category::Marketing => MessageCategory::Marketing,
            crate::rule::Category::Transactional => MessageCategory::Transactional,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_parses_back() {
        for v in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(v.as_str()), Some(*v));
        }
        for v in MessageCategory::ALL {
            assert_eq!(MessageCategory::parse(v.as_str()), Some(*v));
        }
        for v in StoredOutcome::ALL {
            assert_eq!(StoredOutcome::parse(v.as_str()), Some(*v));
        }
        assert_eq!(MessageStatus::parse("Pending"), None);
    }
}
