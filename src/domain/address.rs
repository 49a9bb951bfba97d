//! E-mail addresses (RFC 5322 addr-spec) and mailboxes with a display name.

use serde::{Deserialize, Serialize};

use super::check_header_safe;

/// An RFC 5322 `addr-spec` (`local@domain`), without a display name or angle
/// brackets. Internationalised domains are accepted as typed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > 254 {
            return Err("must be at most 254 characters (RFC 5321)".into());
        }
        check_header_safe(s)?;
        if s.trim() != s {
            return Err("must not have leading or trailing spaces".into());
        }
        // lettre's parser implements the addr-spec grammar (dot-atom or quoted
        // local part, domain name or address literal).
        s.parse::<lettre::Address>()
            .map_err(|e| format!("{s:?} is not a valid e-mail address: {e}"))?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

text_type!(EmailAddress, 0);

/// An address with an optional display name (any Unicode, Cyrillic included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub address: EmailAddress,
    #[serde(default)]
    pub display_name: String,
}

impl Mailbox {
    /// Validates a display name: any Unicode text without control characters.
    pub fn parse_display_name(s: &str) -> Result<String, String> {
        check_header_safe(s)?;
        if s.chars().count() > 256 {
            return Err("must be at most 256 characters".into());
        }
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_quoted_addresses() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.org",
            "\"a b\"@example.com",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_and_injected_addresses() {
        for bad in [
            "",
            "plain",
            "a@",
            "@b.c",
            "a@b.c\r\nBcc: x@y.z",
            " a@b.c",
            "a@b.c\0",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
    }
}
