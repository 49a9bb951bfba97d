//! Validated domain types. Everything here can only hold valid values: the API
//! layer parses wire messages into these once, at the edge, and the store,
//! dispatcher and backends never re-check.

/// A validated text type: (de)serialized as its text and re-validated by its
/// `parse` when read back (`#[serde(try_from = "String", into = "String")]`),
/// and displayed as its text.
macro_rules! text_type {
    ($t:ident, $field:tt) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.$field
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.$field)
            }
        }
    };
}

mod address;
mod connection;
mod message;
mod notification;

pub use address::{EmailAddress, Mailbox};
pub use connection::{
    Backend, Connection, ConnectionName, ExchangeAuth, ExchangeServer, ExchangeSettings,
    ExchangeVersion, HostName, LogLevel, Secret, SmtpAuth, SmtpSettings, SmtpTls,
};
pub use message::{
    ALLOWED_HEADERS, Attachment, OutgoingMessage, Priority, parse_header_name, parse_header_value,
};
pub use notification::{Notification, NotificationId, Rejected, State};

/// One invalid field: its dotted path in the request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects every invalid field of a request, so that a client learns all of
/// them at once instead of one per round trip.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records the error of a parse result under `field` and returns the value.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// Rejects characters that would let a value break out of a header line or a
/// protocol command: CR, LF and NUL (and other C0 controls except TAB).
pub fn check_header_safe(value: &str) -> Result<(), String> {
    if let Some(c) = value
        .chars()
        .find(|c| (c.is_control() && *c != '\t') || *c == '\u{2028}' || *c == '\u{2029}')
    {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}
