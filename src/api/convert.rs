//! Conversions between the wire `Connection` and the domain `Connection`.
//! Parsing collects every violation with its field path.

use std::time::{Duration, SystemTime};

use crate::{
    domain::{
        Backend, Connection, ConnectionName, EmailAddress, ExchangeAuth, ExchangeServer,
        ExchangeSettings, ExchangeVersion, HostName, LogLevel, Mailbox, Secret, SmtpAuth,
        SmtpSettings, SmtpTls, Violations, check_header_safe,
    },
    pb,
    store::Versioned,
};

const MAX_DESCRIPTION: usize = 4096;
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Parses a wire connection. `prefix` is the path of the connection in the
/// request (`connection`). Passwords are taken when non-empty; whether an
/// empty one keeps a stored password is the caller's decision.
pub fn connection_from_pb(c: &pb::Connection, prefix: &str) -> Result<Connection, Violations> {
    let mut v = Violations::default();
    let f = |name: &str| format!("{prefix}.{name}");
    let name = v.check(&f("name"), ConnectionName::parse(&c.name));
    if c.description.chars().count() > MAX_DESCRIPTION {
        v.add(
            f("description"),
            format!("must be at most {MAX_DESCRIPTION} characters"),
        );
    }
    if c.description.contains('\0') {
        v.add(f("description"), "must not contain NUL characters");
    }
    let log_level = match pb::LogLevel::try_from(c.log_level) {
        Ok(pb::LogLevel::Unspecified | pb::LogLevel::Errors) => Some(LogLevel::Errors),
        Ok(pb::LogLevel::Full) => Some(LogLevel::Full),
        Ok(pb::LogLevel::Off) => Some(LogLevel::Off),
        Err(_) => {
            v.add(f("log_level"), unknown_enum(c.log_level));
            None
        }
    };
    let sender = match &c.sender {
        None => {
            v.add(f("sender.address"), "is required");
            None
        }
        Some(s) => {
            let address = v.check(&f("sender.address"), EmailAddress::parse(&s.address));
            let display_name = v.check(
                &f("sender.display_name"),
                Mailbox::parse_display_name(&s.display_name),
            );
            address
                .zip(display_name)
                .map(|(address, display_name)| Mailbox {
                    address,
                    display_name,
                })
        }
    };
    let backend = match &c.backend {
        None => {
            v.add(
                f("backend"),
                "exactly one backend is required: set `smtp` or `exchange`",
            );
            None
        }
        Some(pb::connection::Backend::Smtp(s)) => {
            smtp_from_pb(s, &f("smtp"), &mut v).map(Backend::Smtp)
        }
        Some(pb::connection::Backend::Exchange(e)) => {
            exchange_from_pb(e, &f("exchange"), &mut v).map(Backend::Exchange)
        }
    };
    match (name, log_level, sender, backend) {
        (Some(name), Some(log_level), Some(sender), Some(backend)) if v.is_empty() => {
            Ok(Connection {
                name,
                disabled: c.disabled,
                description: c.description.clone(),
                log_level,
                sender,
                is_default: c.is_default,
                backend,
            })
        }
        _ => Err(v),
    }
}

fn unknown_enum(value: i32) -> String {
    format!("unknown value {value}")
}

fn text_field(v: &mut Violations, field: &str, value: &str) -> String {
    if let Err(e) = check_header_safe(value) {
        v.add(field, e);
    }
    value.to_owned()
}

fn password(v: &mut Violations, field: &str, value: &str) -> Option<Secret> {
    if value.contains(['\r', '\n', '\0']) {
        v.add(field, "must not contain CR, LF or NUL");
    }
    (!value.is_empty()).then(|| Secret::new(value))
}

fn timeout(
    v: &mut Violations,
    field: &str,
    value: Option<&prost_types::Duration>,
) -> Option<Duration> {
    let d = value?;
    match Duration::try_from(*d) {
        Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
        _ => {
            v.add(field, "must be more than 0 and at most 600 s");
            None
        }
    }
}

fn ca_pem(v: &mut Violations, field: &str, pem: &str) -> String {
    if pem.is_empty() {
        return String::new();
    }
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => {}
        Ok(_) => v.add(field, "holds no PEM CERTIFICATE block"),
        Err(e) => v.add(field, format!("is not valid PEM: {e}")),
    }
    pem.to_owned()
}

fn smtp_from_pb(s: &pb::SmtpSettings, p: &str, v: &mut Violations) -> Option<SmtpSettings> {
    let f = |name: &str| format!("{p}.{name}");
    let host = v.check(&f("host"), HostName::parse(&s.host));
    let port = match u16::try_from(s.port) {
        Ok(0) => {
            v.add(f("port"), "is required (1-65535)");
            None
        }
        Ok(p) => Some(p),
        Err(_) => {
            v.add(f("port"), format!("{} is out of range 1-65535", s.port));
            None
        }
    };
    let tls = match pb::SmtpTls::try_from(s.tls) {
        Ok(pb::SmtpTls::Unspecified) => Some(SmtpTls::Auto),
        Ok(pb::SmtpTls::Starttls) => Some(SmtpTls::StartTls),
        Ok(pb::SmtpTls::Opportunistic) => Some(SmtpTls::Opportunistic),
        Ok(pb::SmtpTls::Implicit) => Some(SmtpTls::Implicit),
        Ok(pb::SmtpTls::None) => Some(SmtpTls::None),
        Err(_) => {
            v.add(f("tls"), unknown_enum(s.tls));
            None
        }
    };
    let auth = match pb::SmtpAuth::try_from(s.auth) {
        Ok(pb::SmtpAuth::Unspecified) => Some(SmtpAuth::Negotiate),
        Ok(pb::SmtpAuth::None) => Some(SmtpAuth::None),
        Ok(pb::SmtpAuth::Plain) => Some(SmtpAuth::Plain),
        Ok(pb::SmtpAuth::Login) => Some(SmtpAuth::Login),
        Ok(pb::SmtpAuth::CramMd5) => Some(SmtpAuth::CramMd5),
        Ok(pb::SmtpAuth::Ntlm) => Some(SmtpAuth::Ntlm),
        Ok(pb::SmtpAuth::Xoauth2) => Some(SmtpAuth::Xoauth2),
        Ok(pb::SmtpAuth::Gssapi) => {
            v.add(
                f("auth"),
                "GSSAPI (Kerberos) is not supported yet; choose NTLM, CRAM_MD5, PLAIN or LOGIN",
            );
            None
        }
        Err(_) => {
            v.add(f("auth"), unknown_enum(s.auth));
            None
        }
    };
    let hello_name = text_field(v, &f("hello_name"), &s.hello_name);
    if !hello_name.is_empty() {
        let literal = hello_name
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|ip| {
                ip.trim_start_matches("IPv6:")
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            });
        if !literal && HostName::parse(&hello_name).is_err() {
            v.add(
                f("hello_name"),
                "must be a DNS name or an address literal such as [192.0.2.1]",
            );
        }
    }
    let settings = SmtpSettings {
        host: host?,
        port: port?,
        tls: tls?,
        trusted_ca_pem: ca_pem(v, &f("trusted_ca_pem"), &s.trusted_ca_pem),
        accept_invalid_certs: s.accept_invalid_certs,
        auth: auth?,
        username: text_field(v, &f("username"), &s.username),
        password: password(v, &f("password"), &s.password),
        domain: text_field(v, &f("domain"), &s.domain),
        hello_name,
        timeout: timeout(v, &f("timeout"), s.timeout.as_ref()),
    };
    Some(settings)
}

fn exchange_from_pb(
    e: &pb::ExchangeSettings,
    p: &str,
    v: &mut Violations,
) -> Option<ExchangeSettings> {
    let f = |name: &str| format!("{p}.{name}");
    let server = v.check(&f("server"), ExchangeServer::parse(&e.server));
    let version = match pb::ExchangeVersion::try_from(e.version) {
        Ok(pb::ExchangeVersion::Unspecified) => {
            v.add(
                f("version"),
                "is required: choose the server's version (Exchange 2019 and Exchange Online: EXCHANGE_VERSION_2016)",
            );
            None
        }
        Ok(pb::ExchangeVersion::ExchangeVersion2007Sp1) => Some(ExchangeVersion::Exchange2007Sp1),
        Ok(pb::ExchangeVersion::ExchangeVersion2010) => Some(ExchangeVersion::Exchange2010),
        Ok(pb::ExchangeVersion::ExchangeVersion2010Sp1) => Some(ExchangeVersion::Exchange2010Sp1),
        Ok(pb::ExchangeVersion::ExchangeVersion2010Sp2) => Some(ExchangeVersion::Exchange2010Sp2),
        Ok(pb::ExchangeVersion::ExchangeVersion2013) => Some(ExchangeVersion::Exchange2013),
        Ok(pb::ExchangeVersion::ExchangeVersion2013Sp1) => Some(ExchangeVersion::Exchange2013Sp1),
        Ok(pb::ExchangeVersion::ExchangeVersion2016) => Some(ExchangeVersion::Exchange2016),
        Err(_) => {
            v.add(f("version"), unknown_enum(e.version));
            None
        }
    };
    let auth = match pb::ExchangeAuth::try_from(e.auth) {
        Ok(pb::ExchangeAuth::Unspecified) => {
            v.add(
                f("auth"),
                "is required: EXCHANGE_AUTH_NONE, EXCHANGE_AUTH_BASIC or EXCHANGE_AUTH_NTLM (Windows authentication)",
            );
            None
        }
        Ok(pb::ExchangeAuth::None) => Some(ExchangeAuth::None),
        Ok(pb::ExchangeAuth::Basic) => Some(ExchangeAuth::Basic),
        Ok(pb::ExchangeAuth::Ntlm) => Some(ExchangeAuth::Ntlm),
        Err(_) => {
            v.add(f("auth"), unknown_enum(e.auth));
            None
        }
    };
    let settings = ExchangeSettings {
        server: server?,
        version: version?,
        auth: auth?,
        username: text_field(v, &f("username"), &e.username),
        password: password(v, &f("password"), &e.password),
        domain: text_field(v, &f("domain"), &e.domain),
        save_copy: e.save_copy,
        allow_plain_http: e.allow_plain_http,
        trusted_ca_pem: ca_pem(v, &f("trusted_ca_pem"), &e.trusted_ca_pem),
        accept_invalid_certs: e.accept_invalid_certs,
        timeout: timeout(v, &f("timeout"), e.timeout.as_ref()),
    };
    Some(settings)
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The wire form of a connection. Passwords are never included: only
/// `password_set`.
pub fn connection_to_pb(c: &Connection) -> pb::Connection {
    let backend = match &c.backend {
        Backend::Smtp(s) => pb::connection::Backend::Smtp(pb::SmtpSettings {
            host: s.host.to_string(),
            port: u32::from(s.port),
            tls: match s.tls {
                SmtpTls::Auto => pb::SmtpTls::Unspecified,
                SmtpTls::StartTls => pb::SmtpTls::Starttls,
                SmtpTls::Opportunistic => pb::SmtpTls::Opportunistic,
                SmtpTls::Implicit => pb::SmtpTls::Implicit,
                SmtpTls::None => pb::SmtpTls::None,
            } as i32,
            trusted_ca_pem: s.trusted_ca_pem.clone(),
            accept_invalid_certs: s.accept_invalid_certs,
            auth: match s.auth {
                SmtpAuth::Negotiate => pb::SmtpAuth::Unspecified,
                SmtpAuth::None => pb::SmtpAuth::None,
                SmtpAuth::Plain => pb::SmtpAuth::Plain,
                SmtpAuth::Login => pb::SmtpAuth::Login,
                SmtpAuth::CramMd5 => pb::SmtpAuth::CramMd5,
                SmtpAuth::Ntlm => pb::SmtpAuth::Ntlm,
                SmtpAuth::Xoauth2 => pb::SmtpAuth::Xoauth2,
            } as i32,
            username: s.username.clone(),
            password: String::new(),
            password_set: s.password.is_some(),
            domain: s.domain.clone(),
            hello_name: s.hello_name.clone(),
            timeout: s
                .timeout
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        }),
        Backend::Exchange(e) => pb::connection::Backend::Exchange(pb::ExchangeSettings {
            server: e.server.to_string(),
            version: match e.version {
                ExchangeVersion::Exchange2007Sp1 => pb::ExchangeVersion::ExchangeVersion2007Sp1,
                ExchangeVersion::Exchange2010 => pb::ExchangeVersion::ExchangeVersion2010,
                ExchangeVersion::Exchange2010Sp1 => pb::ExchangeVersion::ExchangeVersion2010Sp1,
                ExchangeVersion::Exchange2010Sp2 => pb::ExchangeVersion::ExchangeVersion2010Sp2,
                ExchangeVersion::Exchange2013 => pb::ExchangeVersion::ExchangeVersion2013,
                ExchangeVersion::Exchange2013Sp1 => pb::ExchangeVersion::ExchangeVersion2013Sp1,
                ExchangeVersion::Exchange2016 => pb::ExchangeVersion::ExchangeVersion2016,
            } as i32,
            auth: match e.auth {
                ExchangeAuth::None => pb::ExchangeAuth::None,
                ExchangeAuth::Basic => pb::ExchangeAuth::Basic,
                ExchangeAuth::Ntlm => pb::ExchangeAuth::Ntlm,
            } as i32,
            username: e.username.clone(),
            password: String::new(),
            password_set: e.password.is_some(),
            domain: e.domain.clone(),
            save_copy: e.save_copy,
            allow_plain_http: e.allow_plain_http,
            trusted_ca_pem: e.trusted_ca_pem.clone(),
            accept_invalid_certs: e.accept_invalid_certs,
            timeout: e
                .timeout
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        }),
    };
    pb::Connection {
        name: c.name.to_string(),
        disabled: c.disabled,
        description: c.description.clone(),
        log_level: match c.log_level {
            LogLevel::Full => pb::LogLevel::Full,
            LogLevel::Errors => pb::LogLevel::Errors,
            LogLevel::Off => pb::LogLevel::Off,
        } as i32,
        sender: Some(pb::Address {
            address: c.sender.address.to_string(),
            display_name: c.sender.display_name.clone(),
        }),
        is_default: c.is_default,
        backend: Some(backend),
        etag: String::new(),
        create_time: None,
        update_time: None,
    }
}

pub fn versioned_to_pb(v: &Versioned) -> pb::Connection {
    pb::Connection {
        etag: v.etag.clone(),
        create_time: Some(timestamp(v.create_time)),
        update_time: Some(timestamp(v.update_time)),
        ..connection_to_pb(&v.connection)
    }
}
