//! A mail connection: where and how notigate delivers e-mail, validated.

use std::{fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Mailbox, check_header_safe};

/// The connection's system name: `^[A-Za-z0-9_]{1,64}$` (the seed's rule:
/// Latin letters, digits and `_`). Unique; the key; immutable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionName(String);

impl ConnectionName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > 64 {
            return Err(format!("must be at most 64 characters, got {}", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(format!(
                "may contain only Latin letters, digits and '_' (found {c:?})"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

text_type!(ConnectionName, 0);

/// A DNS host name (letters, digits, hyphens; dot-separated labels) or an IP
/// address. IPv6 may be given with or without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if unbracketed.parse::<IpAddr>().is_ok() {
            return Ok(Self(unbracketed.to_owned()));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.len() > 253 {
            return Err("must be at most 253 characters".into());
        }
        for label in name.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(format!(
                    "{s:?} is not a DNS name or IP address (labels of letters, digits and '-', without a scheme, port or path)"
                ));
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_ip(&self) -> bool {
        self.0.parse::<IpAddr>().is_ok()
    }
}

text_type!(HostName, 0);

/// A password or token. Never printed: `Debug` shows `<redacted>`, and it is
/// never serialized (the store seals it separately).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Full,
    Errors,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmtpTls {
    /// Implicit on port 465, STARTTLS otherwise (resolved at use, so that a
    /// later port change keeps meaning what the user chose).
    Auto,
    StartTls,
    Opportunistic,
    Implicit,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmtpAuth {
    /// Strongest mechanism the server offers; none when the username is empty.
    Negotiate,
    None,
    Plain,
    Login,
    CramMd5,
    Ntlm,
    Xoauth2,
}

impl SmtpAuth {
    /// An explicitly chosen mechanism needs a username and a password.
    pub fn needs_credentials(self) -> bool {
        !matches!(self, SmtpAuth::Negotiate | SmtpAuth::None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpSettings {
    pub host: HostName,
    pub port: u16,
    pub tls: SmtpTls,
    #[serde(default)]
    pub trusted_ca_pem: String,
    #[serde(default)]
    pub accept_invalid_certs: bool,
    pub auth: SmtpAuth,
    #[serde(default)]
    pub username: String,
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub hello_name: String,
    pub timeout: Option<Duration>,
}

impl SmtpSettings {
    pub fn effective_tls(&self) -> SmtpTls {
        match self.tls {
            SmtpTls::Auto if self.port == 465 => SmtpTls::Implicit,
            SmtpTls::Auto => SmtpTls::StartTls,
            other => other,
        }
    }

    /// Whether the session authenticates at all.
    pub fn authenticates(&self) -> bool {
        match self.auth {
            SmtpAuth::None => false,
            SmtpAuth::Negotiate => !self.username.is_empty(),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeVersion {
    Exchange2007Sp1,
    Exchange2010,
    Exchange2010Sp1,
    Exchange2010Sp2,
    Exchange2013,
    Exchange2013Sp1,
    Exchange2016,
}

impl ExchangeVersion {
    /// The `RequestServerVersion/@Version` value EWS expects.
    pub fn as_ews(self) -> &'static str {
        match self {
            ExchangeVersion::Exchange2007Sp1 => "Exchange2007_SP1",
            ExchangeVersion::Exchange2010 => "Exchange2010",
            ExchangeVersion::Exchange2010Sp1 => "Exchange2010_SP1",
            ExchangeVersion::Exchange2010Sp2 => "Exchange2010_SP2",
            ExchangeVersion::Exchange2013 => "Exchange2013",
            ExchangeVersion::Exchange2013Sp1 => "Exchange2013_SP1",
            ExchangeVersion::Exchange2016 => "Exchange2016",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeAuth {
    None,
    Basic,
    Ntlm,
}

/// The EWS endpoint as the seed asks for it: `host[:port][/path]`, without a
/// scheme (the scheme follows from `allow_plain_http`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExchangeServer {
    raw: String,
    host: HostName,
    port: Option<u16>,
    path: String,
}

pub const DEFAULT_EWS_PATH: &str = "/EWS/Exchange.asmx";

impl ExchangeServer {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http:") || lower.starts_with("https:") || s.contains("://") {
            return Err(
                "must not include the protocol (http:// or https://): give host[:port][/path]; \
                 HTTPS is used unless allow_plain_http is set"
                    .into(),
            );
        }
        check_header_safe(s)?;
        if s.chars().any(char::is_whitespace) {
            return Err("must not contain spaces".into());
        }
        let (authority, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        if path.contains(['?', '#']) {
            return Err("the path must not contain '?' or '#'".into());
        }
        let (host, port) = split_host_port(authority)?;
        let host = HostName::parse(host)?;
        let path = if path.is_empty() || path == "/" {
            DEFAULT_EWS_PATH.to_owned()
        } else {
            path.to_owned()
        };
        Ok(Self {
            raw: s.to_owned(),
            host,
            port,
            path,
        })
    }

    pub fn host(&self) -> &HostName {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The endpoint URL for the given scheme choice.
    pub fn url(&self, plain_http: bool) -> String {
        let scheme = if plain_http { "http" } else { "https" };
        let host = if self.host.as_str().contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.to_string()
        };
        match self.port {
            Some(p) => format!("{scheme}://{host}:{p}{}", self.path),
            None => format!("{scheme}://{host}{}", self.path),
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |p: &str| -> Result<Option<u16>, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("port {p:?} must be a number from 1 to 65535")),
        }
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "an IPv6 address needs its closing ']'".to_string())?;
        let host = &rest[..end];
        return match &rest[end + 1..] {
            "" => Ok((host, None)),
            p => match p.strip_prefix(':') {
                Some(p) => Ok((host, parse_port(p)?)),
                None => Err("unexpected text after ']'".into()),
            },
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h, parse_port(p)?)),
        _ => Ok((authority, None)),
    }
}

text_type!(ExchangeServer, raw);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSettings {
    pub server: ExchangeServer,
    pub version: ExchangeVersion,
    pub auth: ExchangeAuth,
    #[serde(default)]
    pub username: String,
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub save_copy: bool,
    #[serde(default)]
    pub allow_plain_http: bool,
    #[serde(default)]
    pub trusted_ca_pem: String,
    #[serde(default)]
    pub accept_invalid_certs: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Smtp(SmtpSettings),
    Exchange(ExchangeSettings),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Smtp(_) => "smtp",
            Backend::Exchange(_) => "exchange",
        }
    }

    pub fn password(&self) -> Option<&Secret> {
        match self {
            Backend::Smtp(s) => s.password.as_ref(),
            Backend::Exchange(e) => e.password.as_ref(),
        }
    }

    pub fn set_password(&mut self, password: Option<Secret>) {
        match self {
            Backend::Smtp(s) => s.password = password,
            Backend::Exchange(e) => e.password = password,
        }
    }

    /// Whether the chosen authentication uses a password at all.
    pub fn uses_password(&self) -> bool {
        match self {
            Backend::Smtp(s) => s.auth != SmtpAuth::None,
            Backend::Exchange(e) => e.auth != ExchangeAuth::None,
        }
    }

    /// Checks that the chosen authentication has the credentials it needs.
    /// Runs after an update has merged the stored password in. Returns the
    /// field (relative to the connection) and the problem.
    pub fn check_credentials(&self) -> Result<(), (&'static str, String)> {
        match self {
            Backend::Smtp(s) if s.authenticates() => {
                if s.username.is_empty() {
                    return Err((
                        "smtp.username",
                        format!("is required with auth {:?}", s.auth),
                    ));
                }
                if s.password.is_none() {
                    return Err((
                        "smtp.password",
                        format!("is required with auth {:?}", s.auth),
                    ));
                }
                Ok(())
            }
            Backend::Exchange(e) if e.auth != ExchangeAuth::None => {
                if e.username.is_empty() {
                    return Err((
                        "exchange.username",
                        format!("is required with auth {:?}", e.auth),
                    ));
                }
                if e.password.is_none() {
                    return Err((
                        "exchange.password",
                        format!("is required with auth {:?}", e.auth),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub name: ConnectionName,
    pub disabled: bool,
    pub description: String,
    pub log_level: LogLevel,
    pub sender: Mailbox,
    pub is_default: bool,
    pub backend: Backend,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_follow_the_seed_rule() {
        assert!(ConnectionName::parse("Main_SMTP_2").is_ok());
        for bad in ["", "with space", "dash-ed", "кириллица", &"a".repeat(65)] {
            assert!(ConnectionName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exchange_server_refuses_a_scheme_and_defaults_the_path() {
        assert!(ExchangeServer::parse("https://mail.example.com").is_err());
        assert!(ExchangeServer::parse("HTTP://mail.example.com").is_err());
        let s = ExchangeServer::parse("mail.example.com").unwrap();
        assert_eq!(s.url(false), "https://mail.example.com/EWS/Exchange.asmx");
        let s = ExchangeServer::parse("127.0.0.1:8443/ews/x.asmx").unwrap();
        assert_eq!(s.url(true), "http://127.0.0.1:8443/ews/x.asmx");
        let s = ExchangeServer::parse("[::1]:80").unwrap();
        assert_eq!(s.url(true), "http://[::1]:80/EWS/Exchange.asmx");
        assert!(ExchangeServer::parse("mail.example.com:0").is_err());
        assert!(ExchangeServer::parse("mail.example.com:99999").is_err());
    }

    #[test]
    fn host_names_are_dns_names_or_ips() {
        for ok in [
            "smtp.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "mx1",
        ] {
            assert!(HostName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "smtp.example.com:25",
            "-bad.com",
            "a..b",
            "smtp://x",
            "a b",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
    }
}
