//! AIP-134 field masks for `UpdateConnection`: which paths exist, and copying
//! the masked fields from the request onto the stored connection.

use crate::pb::{self, connection::Backend};

const TOP: &[&str] = &[
    "disabled",
    "description",
    "log_level",
    "sender",
    "sender.address",
    "sender.display_name",
    "is_default",
    "smtp",
    "exchange",
];
const SMTP: &[&str] = &[
    "host",
    "port",
    "tls",
    "trusted_ca_pem",
    "accept_invalid_certs",
    "auth",
    "username",
    "password",
    "domain",
    "hello_name",
    "timeout",
];
const EXCHANGE: &[&str] = &[
    "server",
    "version",
    "auth",
    "username",
    "password",
    "domain",
    "save_copy",
    "allow_plain_http",
    "trusted_ca_pem",
    "accept_invalid_certs",
    "timeout",
];
/// Output-only or identifying fields: allowed in a mask and ignored (AIP-203).
const IGNORED: &[&str] = &[
    "name",
    "etag",
    "create_time",
    "update_time",
    "smtp.password_set",
    "exchange.password_set",
];

/// Checks a mask and expands it to the leaf or message paths to copy.
/// An empty mask means every field set in the request.
pub fn resolve(
    paths: &[String],
    request: &pb::Connection,
    current: &pb::Connection,
) -> Result<Vec<String>, String> {
    if paths.is_empty() {
        return Ok(set_paths(request, current));
    }
    let mut out = Vec::new();
    for path in paths {
        if path == "*" {
            out.extend(
                [
                    "disabled",
                    "description",
                    "log_level",
                    "sender",
                    "is_default",
                ]
                .map(String::from),
            );
            out.push(match &request.backend {
                Some(Backend::Exchange(_)) => "exchange".into(),
                _ => "smtp".into(),
            });
            continue;
        }
        if IGNORED.contains(&path.as_str()) {
            continue;
        }
        let known = TOP.contains(&path.as_str())
            || path
                .strip_prefix("smtp.")
                .is_some_and(|f| SMTP.contains(&f))
            || path
                .strip_prefix("exchange.")
                .is_some_and(|f| EXCHANGE.contains(&f));
        if !known {
            return Err(format!("unknown field path {path:?}"));
        }
        let current_kind = backend_kind(current);
        for kind in ["smtp", "exchange"] {
            if path.starts_with(&format!("{kind}.")) && current_kind != Some(kind) {
                return Err(format!(
                    "{path:?} changes a field of the {kind} backend, but the connection uses {}; \
                     to switch backends put {kind:?} in the mask",
                    current_kind.unwrap_or("no backend")
                ));
            }
        }
        out.push(path.clone());
    }
    Ok(out)
}

fn backend_kind(c: &pb::Connection) -> Option<&'static str> {
    match c.backend {
        Some(Backend::Smtp(_)) => Some("smtp"),
        Some(Backend::Exchange(_)) => Some("exchange"),
        None => None,
    }
}

/// The paths of the fields that hold a non-default value in `request`.
fn set_paths(request: &pb::Connection, current: &pb::Connection) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |cond: bool, p: &str| {
        if cond {
            out.push(p.to_owned());
        }
    };
    push(request.disabled, "disabled");
    push(!request.description.is_empty(), "description");
    push(request.log_level != 0, "log_level");
    if let Some(s) = &request.sender {
        push(!s.address.is_empty(), "sender.address");
        push(!s.display_name.is_empty(), "sender.display_name");
    }
    push(request.is_default, "is_default");
    let same_kind = backend_kind(request) == backend_kind(current);
    match &request.backend {
        Some(Backend::Smtp(s)) if same_kind => {
            let fields = [
                ("host", !s.host.is_empty()),
                ("port", s.port != 0),
                ("tls", s.tls != 0),
                ("trusted_ca_pem", !s.trusted_ca_pem.is_empty()),
                ("accept_invalid_certs", s.accept_invalid_certs),
                ("auth", s.auth != 0),
                ("username", !s.username.is_empty()),
                ("password", !s.password.is_empty()),
                ("domain", !s.domain.is_empty()),
                ("hello_name", !s.hello_name.is_empty()),
                ("timeout", s.timeout.is_some()),
            ];
            for (f, set) in fields {
                push(set, &format!("smtp.{f}"));
            }
        }
        Some(Backend::Exchange(e)) if same_kind => {
            let fields = [
                ("server", !e.server.is_empty()),
                ("version", e.version != 0),
                ("auth", e.auth != 0),
                ("username", !e.username.is_empty()),
                ("password", !e.password.is_empty()),
                ("domain", !e.domain.is_empty()),
                ("save_copy", e.save_copy),
                ("allow_plain_http", e.allow_plain_http),
                ("trusted_ca_pem", !e.trusted_ca_pem.is_empty()),
                ("accept_invalid_certs", e.accept_invalid_certs),
                ("timeout", e.timeout.is_some()),
            ];
            for (f, set) in fields {
                push(set, &format!("exchange.{f}"));
            }
        }
        Some(Backend::Smtp(_)) => push(true, "smtp"),
        Some(Backend::Exchange(_)) => push(true, "exchange"),
        None => {}
    }
    out
}

/// Whether the resolved paths replace the backend's password field.
pub fn covers_password(paths: &[String], kind: &str) -> bool {
    paths
        .iter()
        .any(|p| p == kind || *p == format!("{kind}.password"))
}

/// Copies the fields named by `paths` (as returned by [`resolve`]) from
/// `source` onto `target`. A field in the mask but absent from `source` is
/// cleared, as AIP-134 prescribes.
pub fn apply(target: &mut pb::Connection, source: &pb::Connection, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "disabled" => target.disabled = source.disabled,
            "description" => target.description = source.description.clone(),
            "log_level" => target.log_level = source.log_level,
            "sender" => target.sender = source.sender.clone(),
            "sender.address" | "sender.display_name" => {
                let src = source.sender.clone().unwrap_or_default();
                let dst = target.sender.get_or_insert_with(Default::default);
                if path == "sender.address" {
                    dst.address = src.address;
                } else {
                    dst.display_name = src.display_name;
                }
            }
            "is_default" => target.is_default = source.is_default,
            "smtp" => {
                target.backend = match &source.backend {
                    Some(Backend::Smtp(s)) => Some(Backend::Smtp(s.clone())),
                    _ => None,
                }
            }
            "exchange" => {
                target.backend = match &source.backend {
                    Some(Backend::Exchange(e)) => Some(Backend::Exchange(e.clone())),
                    _ => None,
                }
            }
            p => {
                if let Some(field) = p.strip_prefix("smtp.") {
                    let src = match &source.backend {
                        Some(Backend::Smtp(s)) => s.clone(),
                        _ => Default::default(),
                    };
                    if let Some(Backend::Smtp(dst)) = &mut target.backend {
                        copy_smtp(dst, src, field);
                    }
                } else if let Some(field) = p.strip_prefix("exchange.") {
                    let src = match &source.backend {
                        Some(Backend::Exchange(e)) => e.clone(),
                        _ => Default::default(),
                    };
                    if let Some(Backend::Exchange(dst)) = &mut target.backend {
                        copy_exchange(dst, src, field);
                    }
                }
            }
        }
    }
}

fn copy_smtp(dst: &mut pb::SmtpSettings, src: pb::SmtpSettings, field: &str) {
    match field {
        "host" => dst.host = src.host,
        "port" => dst.port = src.port,
        "tls" => dst.tls = src.tls,
        "trusted_ca_pem" => dst.trusted_ca_pem = src.trusted_ca_pem,
        "accept_invalid_certs" => dst.accept_invalid_certs = src.accept_invalid_certs,
        "auth" => dst.auth = src.auth,
        "username" => dst.username = src.username,
        "password" => dst.password = src.password,
        "domain" => dst.domain = src.domain,
        "hello_name" => dst.hello_name = src.hello_name,
        "timeout" => dst.timeout = src.timeout,
        _ => {}
    }
}

fn copy_exchange(dst: &mut pb::ExchangeSettings, src: pb::ExchangeSettings, field: &str) {
    match field {
        "server" => dst.server = src.server,
        "version" => dst.version = src.version,
        "auth" => dst.auth = src.auth,
        "username" => dst.username = src.username,
        "password" => dst.password = src.password,
        "domain" => dst.domain = src.domain,
        "save_copy" => dst.save_copy = src.save_copy,
        "allow_plain_http" => dst.allow_plain_http = src.allow_plain_http,
        "trusted_ca_pem" => dst.trusted_ca_pem = src.trusted_ca_pem,
        "accept_invalid_certs" => dst.accept_invalid_certs = src.accept_invalid_certs,
        "timeout" => dst.timeout = src.timeout,
        _ => {}
    }
}
