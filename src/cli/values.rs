//! The enum values the flags take (`--smtp-tls starttls`) and their proto
//! counterparts; human output prints the same short names.

use clap::ValueEnum;

use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Every step of each message.
    Full,
    /// Failures only (the default).
    Errors,
    /// Nothing.
    Off,
}

impl From<LogLevel> for pb::LogLevel {
    fn from(v: LogLevel) -> pb::LogLevel {
        match v {
            LogLevel::Full => pb::LogLevel::Full,
            LogLevel::Errors => pb::LogLevel::Errors,
            LogLevel::Off => pb::LogLevel::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    /// Implicit TLS on port 465, STARTTLS (required) otherwise (the default).
    Auto,
    /// STARTTLS required; a server without it is an error.
    Starttls,
    /// STARTTLS when offered, plain text otherwise.
    Opportunistic,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// Plain text only.
    None,
}

impl From<SmtpTls> for pb::SmtpTls {
    fn from(v: SmtpTls) -> pb::SmtpTls {
        match v {
            SmtpTls::Auto => pb::SmtpTls::Unspecified,
            SmtpTls::Starttls => pb::SmtpTls::Starttls,
            SmtpTls::Opportunistic => pb::SmtpTls::Opportunistic,
            SmtpTls::Implicit => pb::SmtpTls::Implicit,
            SmtpTls::None => pb::SmtpTls::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpAuth {
    /// The strongest mechanism the server offers; none without --username
    /// (the default).
    Negotiate,
    /// No AUTH (internal relays).
    None,
    Plain,
    Login,
    /// Seed's "Digest".
    CramMd5,
    /// NTLMv2 (--domain is the NTLM domain).
    Ntlm,
    /// OAuth 2: the password is the access token.
    Xoauth2,
}

impl From<SmtpAuth> for pb::SmtpAuth {
    fn from(v: SmtpAuth) -> pb::SmtpAuth {
        match v {
            SmtpAuth::Negotiate => pb::SmtpAuth::Unspecified,
            SmtpAuth::None => pb::SmtpAuth::None,
            SmtpAuth::Plain => pb::SmtpAuth::Plain,
            SmtpAuth::Login => pb::SmtpAuth::Login,
            SmtpAuth::CramMd5 => pb::SmtpAuth::CramMd5,
            SmtpAuth::Ntlm => pb::SmtpAuth::Ntlm,
            SmtpAuth::Xoauth2 => pb::SmtpAuth::Xoauth2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeVersion {
    #[value(name = "2007-sp1")]
    V2007Sp1,
    #[value(name = "2010")]
    V2010,
    #[value(name = "2010-sp1")]
    V2010Sp1,
    #[value(name = "2010-sp2")]
    V2010Sp2,
    #[value(name = "2013")]
    V2013,
    #[value(name = "2013-sp1")]
    V2013Sp1,
    /// Also Exchange 2019 and Exchange Online.
    #[value(name = "2016")]
    V2016,
}

impl From<ExchangeVersion> for pb::ExchangeVersion {
    fn from(v: ExchangeVersion) -> pb::ExchangeVersion {
        use pb::ExchangeVersion as P;
        match v {
            ExchangeVersion::V2007Sp1 => P::ExchangeVersion2007Sp1,
            ExchangeVersion::V2010 => P::ExchangeVersion2010,
            ExchangeVersion::V2010Sp1 => P::ExchangeVersion2010Sp1,
            ExchangeVersion::V2010Sp2 => P::ExchangeVersion2010Sp2,
            ExchangeVersion::V2013 => P::ExchangeVersion2013,
            ExchangeVersion::V2013Sp1 => P::ExchangeVersion2013Sp1,
            ExchangeVersion::V2016 => P::ExchangeVersion2016,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeAuth {
    None,
    Basic,
    /// Windows authentication.
    Ntlm,
}

impl From<ExchangeAuth> for pb::ExchangeAuth {
    fn from(v: ExchangeAuth) -> pb::ExchangeAuth {
        match v {
            ExchangeAuth::None => pb::ExchangeAuth::None,
            ExchangeAuth::Basic => pb::ExchangeAuth::Basic,
            ExchangeAuth::Ntlm => pb::ExchangeAuth::Ntlm,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl From<Priority> for pb::Priority {
    fn from(v: Priority) -> pb::Priority {
        match v {
            Priority::Low => pb::Priority::Low,
            Priority::Normal => pb::Priority::Normal,
            Priority::High => pb::Priority::High,
        }
    }
}

/// The short name of a proto enum value for human output: the value name
/// without its type prefix, e.g. `SMTP_TLS_STARTTLS` → `starttls`; `default`
/// for the unspecified value, the number for one this client doesn't know.
pub fn short_name(full: Option<&str>, prefix: &str, raw: i32) -> String {
    match full {
        Some(name) if name.ends_with("_UNSPECIFIED") => "default".into(),
        Some(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase()
            .replace('_', "-"),
        None => raw.to_string(),
    }
}

pub fn log_level(raw: i32) -> String {
    let full = pb::LogLevel::try_from(raw).ok().map(|v| v.as_str_name());
    match full {
        Some("LOG_LEVEL_UNSPECIFIED") => "errors (default)".into(),
        _ => short_name(full, "LOG_LEVEL_", raw),
    }
}

pub fn smtp_tls(raw: i32) -> String {
    let full = pb::SmtpTls::try_from(raw).ok().map(|v| v.as_str_name());
    match full {
        Some("SMTP_TLS_UNSPECIFIED") => "auto (implicit on 465, starttls otherwise)".into(),
        _ => short_name(full, "SMTP_TLS_", raw),
    }
}

pub fn smtp_auth(raw: i32) -> String {
    let full = pb::SmtpAuth::try_from(raw).ok().map(|v| v.as_str_name());
    match full {
        Some("SMTP_AUTH_UNSPECIFIED") => "negotiate".into(),
        _ => short_name(full, "SMTP_AUTH_", raw),
    }
}

pub fn exchange_version(raw: i32) -> String {
    let full = pb::ExchangeVersion::try_from(raw)
        .ok()
        .map(|v| v.as_str_name());
    short_name(full, "EXCHANGE_VERSION_", raw)
}

pub fn exchange_auth(raw: i32) -> String {
    let full = pb::ExchangeAuth::try_from(raw)
        .ok()
        .map(|v| v.as_str_name());
    short_name(full, "EXCHANGE_AUTH_", raw)
}

/// A notification state as people read it: `DELIVERED`.
pub fn state(raw: i32) -> String {
    match pb::NotificationState::try_from(raw) {
        Ok(s) => s
            .as_str_name()
            .strip_prefix("NOTIFICATION_STATE_")
            .unwrap_or(s.as_str_name())
            .to_owned(),
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_the_flag_values() {
        assert_eq!(smtp_tls(pb::SmtpTls::Starttls as i32), "starttls");
        assert_eq!(smtp_auth(pb::SmtpAuth::CramMd5 as i32), "cram-md5");
        assert_eq!(
            exchange_version(pb::ExchangeVersion::ExchangeVersion2010Sp1 as i32),
            "2010-sp1"
        );
        assert_eq!(exchange_auth(pb::ExchangeAuth::Ntlm as i32), "ntlm");
        assert_eq!(log_level(pb::LogLevel::Full as i32), "full");
        assert_eq!(state(pb::NotificationState::Delivered as i32), "DELIVERED");
        assert_eq!(smtp_auth(42), "42");
    }
}
