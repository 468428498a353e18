//! What can be wrong with a trigger definition, with the JSON path where it is wrong.

use std::fmt;

/// One problem in a definition: where (`$.cap.per`), what, and optionally how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    pub path: String,
    pub problem: String,
    pub hint: Option<String>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.path, self.problem)
    }
}

impl DefinitionError {
    pub fn new(path: &str, problem: impl Into<String>) -> Self {
        DefinitionError { path: path.to_string(), problem: problem.into(), hint: None }
    }

    /// Re-roots an error found by the action parser (`$.action.template`) where the user wrote
    /// the action: a variant (`$.variants[1].template`), a step or an escalation.
    pub fn rerooted_at(mut self, action_path: &str) -> Self {
        if let Some(rest) = self.path.strip_prefix("$.action") {
            self.path = format!("{action_path}{rest}");
        }
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Renders a JSON value for an error message, shortened so a huge value cannot flood the log.
pub fn show(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        let short: String = text.chars().take(57).collect();
        format!("{short}...")
    } else {
        text
    }
}

/// At most 40 characters of a name or key, for error messages and paths.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The JSON type name of a value, as used in "expected …, got an array" messages.
pub fn type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
