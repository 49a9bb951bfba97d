//! The response messages as proto3 JSON, the way grpcurl prints them:
//! lowerCamelCase names, enum value names, RFC 3339 timestamps, durations
//! as `"1.5s"`, and fields holding their default value left out. Written
//! out per message rather than derived, because prost types don't implement
//! serde and the well-known types need their special forms.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::pb::{self, connection::Backend};

/// A JSON object that skips default values, as proto3 JSON does.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn str(mut self, key: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(key.into(), v.into());
        }
        self
    }

    fn bool(mut self, key: &str, v: bool) -> Self {
        if v {
            self.0.insert(key.into(), true.into());
        }
        self
    }

    fn u32(mut self, key: &str, v: u32) -> Self {
        if v != 0 {
            self.0.insert(key.into(), v.into());
        }
        self
    }

    /// An enum by name; a value this client does not know, by number.
    fn enumeration(mut self, key: &str, name: Option<&str>, raw: i32) -> Self {
        if raw != 0 {
            let v = name.map_or_else(|| Value::from(raw), Value::from);
            self.0.insert(key.into(), v);
        }
        self
    }

    fn value(mut self, key: &str, v: Option<Value>) -> Self {
        if let Some(v) = v {
            self.0.insert(key.into(), v);
        }
        self
    }

    fn list(mut self, key: &str, items: Vec<Value>) -> Self {
        if !items.is_empty() {
            self.0.insert(key.into(), Value::Array(items));
        }
        self
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// `google.protobuf.Timestamp` → `"2026-11-26T14:40:01.101Z"` (0, 3, 6 or 9
/// fractional digits).
pub fn timestamp(t: &prost_types::Timestamp) -> Value {
    Value::from(format_timestamp(t))
}

pub fn format_timestamp(t: &prost_types::Timestamp) -> String {
    let Some(time) = to_system_time(t) else {
        return format!("{}.{:09}s since 1970", t.seconds, t.nanos);
    };
    let nanos = t.nanos.unsigned_abs();
    if nanos == 0 {
        humantime::format_rfc3339_seconds(time).to_string()
    } else if nanos.is_multiple_of(1_000_000) {
        humantime::format_rfc3339_millis(time).to_string()
    } else if nanos.is_multiple_of(1_000) {
        humantime::format_rfc3339_micros(time).to_string()
    } else {
        humantime::format_rfc3339_nanos(time).to_string()
    }
}

fn to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// `google.protobuf.Duration` → `"30s"`, `"0.003831420s"` (0, 3, 6 or 9
/// fractional digits).
pub fn duration(d: &prost_types::Duration) -> Value {
    let negative = d.seconds < 0 || d.nanos < 0;
    let secs = d.seconds.unsigned_abs();
    let nanos = d.nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    let text = if nanos == 0 {
        format!("{sign}{secs}s")
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{sign}{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{sign}{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{sign}{secs}.{nanos:09}s")
    };
    Value::from(text)
}

fn address(a: &pb::Address) -> Value {
    Obj::default()
        .str("address", &a.address)
        .str("displayName", &a.display_name)
        .done()
}

/// A connection. `password` is input only and never printed, even if a
/// server sent one.
pub fn connection(c: &pb::Connection) -> Value {
    let mut obj = Obj::default()
        .str("name", &c.name)
        .bool("disabled", c.disabled)
        .str("description", &c.description)
        .enumeration(
            "logLevel",
            pb::LogLevel::try_from(c.log_level)
                .ok()
                .map(|v| v.as_str_name()),
            c.log_level,
        )
        .value("sender", c.sender.as_ref().map(address))
        .bool("isDefault", c.is_default);
    match &c.backend {
        Some(Backend::Smtp(s)) => {
            let smtp = Obj::default()
                .str("host", &s.host)
                .u32("port", s.port)
                .enumeration(
                    "tls",
                    pb::SmtpTls::try_from(s.tls).ok().map(|v| v.as_str_name()),
                    s.tls,
                )
                .str("trustedCaPem", &s.trusted_ca_pem)
                .bool("acceptInvalidCerts", s.accept_invalid_certs)
                .enumeration(
                    "auth",
                    pb::SmtpAuth::try_from(s.auth).ok().map(|v| v.as_str_name()),
                    s.auth,
                )
                .str("username", &s.username)
                .bool("passwordSet", s.password_set)
                .str("domain", &s.domain)
                .str("helloName", &s.hello_name)
                .value("timeout", s.timeout.as_ref().map(duration))
                .done();
            obj = obj.value("smtp", Some(smtp));
        }
        Some(Backend::Exchange(e)) => {
            let exchange = Obj::default()
                .str("server", &e.server)
                .enumeration(
                    "version",
                    pb::ExchangeVersion::try_from(e.version)
                        .ok()
                        .map(|v| v.as_str_name()),
                    e.version,
                )
                .enumeration(
                    "auth",
                    pb::ExchangeAuth::try_from(e.auth)
                        .ok()
                        .map(|v| v.as_str_name()),
                    e.auth,
                )
                .str("username", &e.username)
                .bool("passwordSet", e.password_set)
                .str("domain", &e.domain)
                .bool("saveCopy", e.save_copy)
                .bool("allowPlainHttp", e.allow_plain_http)
                .str("trustedCaPem", &e.trusted_ca_pem)
                .bool("acceptInvalidCerts", e.accept_invalid_certs)
                .value("timeout", e.timeout.as_ref().map(duration))
                .done();
            obj = obj.value("exchange", Some(exchange));
        }
        None => {}
    }
    obj.str("etag", &c.etag)
        .value("createTime", c.create_time.as_ref().map(timestamp))
        .value("updateTime", c.update_time.as_ref().map(timestamp))
        .done()
}

pub fn list_connections(connections: &[pb::Connection], next_page_token: &str) -> Value {
    Obj::default()
        .list("connections", connections.iter().map(connection).collect())
        .str("nextPageToken", next_page_token)
        .done()
}

pub fn test_connection(r: &pb::TestConnectionResponse) -> Value {
    Obj::default()
        .bool("ok", r.ok)
        .str("stage", &r.stage)
        .str("detail", &r.detail)
        .value("latency", r.latency.as_ref().map(duration))
        .done()
}

fn state_name(raw: i32) -> Option<&'static str> {
    pb::NotificationState::try_from(raw)
        .ok()
        .map(|v| v.as_str_name())
}

pub fn send_response(r: &pb::SendResponse) -> Value {
    Obj::default()
        .str("id", &r.id)
        .enumeration("state", state_name(r.state), r.state)
        .done()
}

pub fn notification(n: &pb::Notification) -> Value {
    let rejected = n
        .rejected_recipients
        .iter()
        .map(|r| {
            Obj::default()
                .str("address", &r.address)
                .str("reply", &r.reply)
                .done()
        })
        .collect();
    Obj::default()
        .str("id", &n.id)
        .str("connection", &n.connection)
        .enumeration("state", state_name(n.state), n.state)
        .u32("attempts", n.attempts)
        .str("lastError", &n.last_error)
        .value(
            "nextAttemptTime",
            n.next_attempt_time.as_ref().map(timestamp),
        )
        .value("createTime", n.create_time.as_ref().map(timestamp))
        .value("updateTime", n.update_time.as_ref().map(timestamp))
        .str("providerMessageId", &n.provider_message_id)
        .list("rejectedRecipients", rejected)
        .done()
}

/// `google.protobuf.Empty`.
pub fn empty() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_types_use_their_proto3_json_forms() {
        let t = |seconds, nanos| format_timestamp(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(t(1_795_704_001, 0), "2026-11-26T14:40:01Z");
        assert_eq!(t(1_795_704_001, 101_000_000), "2026-11-26T14:40:01.101Z");
        assert_eq!(t(1_795_704_001, 101_500), "2026-11-26T14:40:01.000101500Z");
        let d = |seconds, nanos| duration(&prost_types::Duration { seconds, nanos });
        assert_eq!(d(30, 0), "30s");
        assert_eq!(d(0, 3_831_420), "0.003831420s");
        assert_eq!(d(1, 500_000_000), "1.500s");
        assert_eq!(d(-1, -500_000), "-1.000500s");
    }

    #[test]
    fn defaults_are_left_out_and_enums_are_named() {
        let c = pb::Connection {
            name: "a".into(),
            log_level: pb::LogLevel::Full as i32,
            backend: Some(Backend::Smtp(pb::SmtpSettings {
                host: "h".into(),
                port: 25,
                password: "secret".into(),
                password_set: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            connection(&c),
            serde_json::json!({
                "name": "a",
                "logLevel": "LOG_LEVEL_FULL",
                "smtp": {"host": "h", "port": 25, "passwordSet": true}
            })
        );
    }
}
