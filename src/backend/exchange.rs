//! Delivery through Microsoft Exchange Web Services (EWS): the seed's "Send
//! e-mail via Exchange" connection. A message becomes one SOAP `CreateItem`
//! (`SendOnly`, or `SendAndSaveCopy` into Sent Items) posted to
//! `https://<server>/EWS/Exchange.asmx` with no authentication, Basic, or
//! NTLM ("Windows authentication", with Extended Protection over HTTPS).
//!
//! - [`soap`] writes the requests and reads the answers;
//! - [`http`] owns the TCP/TLS connections (NTLM authenticates a
//!   connection, so no general-purpose pooled HTTP client);
//! - [`ntlm`] computes the NTLMv2 tokens; [`tls`] configures rustls.
//!
//! This module keeps a few authenticated connections per notigate
//! connection for reuse, and turns every answer into the retry policy's
//! terms: EWS sends request-level errors as HTTP 500 SOAP faults and item
//! errors as HTTP 200 with `ResponseClass="Error"`, and both are classified
//! by `ResponseCode`.

mod http;
mod soap;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use rustls::ClientConfig;
use tokio::time::Instant;

use self::http::{Conn, Credentials, Endpoint, Failure, Reply, Stage};
use crate::backend::{Backend, Delivery, DeliveryError, TestReport};
use crate::domain::{self, Connection, ExchangeSettings, OutgoingMessage};

/// Used when the connection sets no timeout: covers connecting, TLS,
/// authentication and the answer of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per notigate connection. The dispatcher sends a
/// connection's messages with little parallelism; a handful covers it.
const MAX_IDLE_PER_CONNECTION: usize = 4;

/// IIS closes idle connections after 120 s by default; dropping ours first
/// avoids most sends on a connection the server is just closing.
const MAX_IDLE_TIME: Duration = Duration::from_secs(60);

/// The Exchange backend. Cheap to share: one per server, behind an `Arc`.
#[derive(Default)]
pub struct ExchangeBackend {
    pools: Mutex<HashMap<String, Pool>>,
}

/// Connections of one notigate connection, valid for exactly the settings
/// they were made with (a changed password, server or certificate setting
/// makes them useless).
struct Pool {
    settings: ExchangeSettings,
    tls: Option<Arc<ClientConfig>>,
    idle: Vec<Conn>,
}

/// What an error message about an answer should name.
struct Context<'a> {
    endpoint: &'a Endpoint,
    /// The authenticated account, if any (for the Send-As explanation).
    account: Option<String>,
    sender: Option<&'a str>,
}

impl ExchangeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// An idle connection made with exactly these settings (if any), and the
    /// TLS configuration for making a new one.
    fn checkout(
        &self,
        name: &str,
        settings: &ExchangeSettings,
    ) -> Result<(Option<Conn>, Option<Arc<ClientConfig>>), DeliveryError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = pools.get(name).is_none_or(|p| p.settings != *settings);
        if fresh {
            let tls = if settings.allow_plain_http {
                None
            } else {
                Some(tls::client_config(settings).map_err(DeliveryError::permanent)?)
            };
            pools.insert(
                name.to_owned(),
                Pool {
                    settings: settings.clone(),
                    tls,
                    idle: Vec::new(),
                },
            );
        }
        let Some(pool) = pools.get_mut(name) else {
            return Ok((None, None));
        };
        while let Some(conn) = pool.idle.pop() {
            if conn.is_open() && conn.idle_since.elapsed() < MAX_IDLE_TIME {
                return Ok((Some(conn), pool.tls.clone()));
            }
        }
        Ok((None, pool.tls.clone()))
    }

    fn checkin(&self, name: &str, settings: &ExchangeSettings, conn: Conn) {
        if !conn.is_open() {
            return;
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get_mut(name)
            && pool.settings == *settings
            && pool.idle.len() < MAX_IDLE_PER_CONNECTION
        {
            pool.idle.push(conn);
        }
    }

    /// One SOAP call through the pool: reuse an authenticated connection
    /// when there is one, else open one; retry once on a fresh connection
    /// when a reused one turns out to have been closed by the server.
    async fn call(
        &self,
        target: &Target<'_>,
        action: &str,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Reply, Failure> {
        let Target {
            name,
            settings,
            credentials,
            endpoint,
        } = *target;
        let (idle, tls) = self
            .checkout(name, settings)
            .map_err(|e| failure(Stage::Tls, e))?;
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(conn) => conn,
            None => http::open(endpoint, tls.as_ref(), deadline).await?,
        };
        let mut result = http::post(
            &mut conn,
            endpoint,
            credentials,
            action,
            body.clone(),
            deadline,
        )
        .await;
        if reused && matches!(&result, Err(f) if f.connection_lost) {
            tracing::debug!(
                connection = name,
                "reused EWS connection was closed; reconnecting"
            );
            conn = http::open(endpoint, tls.as_ref(), deadline).await?;
            result = http::post(&mut conn, endpoint, credentials, action, body, deadline).await;
        }
        if result.is_ok() {
            self.checkin(name, settings, conn);
        }
        result
    }
}

/// Where and as whom a call goes.
#[derive(Clone, Copy)]
struct Target<'a> {
    /// The notigate connection's name: the pool key.
    name: &'a str,
    settings: &'a ExchangeSettings,
    credentials: &'a Credentials,
    endpoint: &'a Endpoint,
}

fn failure(stage: Stage, error: DeliveryError) -> Failure {
    Failure {
        stage,
        error,
        connection_lost: false,
    }
}

fn exchange_settings(connection: &Connection) -> Option<&ExchangeSettings> {
    match &connection.backend {
        domain::Backend::Exchange(s) => Some(s),
        domain::Backend::Smtp(_) => None,
    }
}

fn deadline_for(settings: &ExchangeSettings) -> Instant {
    Instant::now() + settings.timeout.unwrap_or(DEFAULT_TIMEOUT)
}

#[async_trait::async_trait]
impl Backend for ExchangeBackend {
    async fn send(
        &self,
        connection: &Connection,
        message: &OutgoingMessage,
    ) -> Result<Delivery, DeliveryError> {
        let Some(settings) = exchange_settings(connection) else {
            return Err(DeliveryError::permanent(
                "not an Exchange connection (the Exchange backend got SMTP settings)",
            ));
        };
        let deadline = deadline_for(settings);
        let endpoint = Endpoint::new(settings);
        let credentials = Credentials::from_settings(settings).map_err(DeliveryError::permanent)?;
        let body = soap::create_item(message, settings.version, settings.save_copy)
            .map_err(|e| DeliveryError::permanent(format!("cannot write the request: {e}")))?;
        let target = Target {
            name: connection.name.as_str(),
            settings,
            credentials: &credentials,
            endpoint: &endpoint,
        };
        let reply = self
            .call(
                &target,
                &soap::soap_action("CreateItem"),
                Bytes::from(body),
                deadline,
            )
            .await
            .map_err(|f| f.error)?;
        let context = Context {
            endpoint: &endpoint,
            account: credentials.account(settings),
            sender: Some(message.from.address.as_str()),
        };
        let (answer, _) = read_reply(&reply, &context)?;
        Ok(Delivery {
            provider_message_id: answer.item_id.unwrap_or_default(),
            rejected: Vec::new(),
        })
    }

    async fn test(&self, connection: &Connection) -> TestReport {
        let report = |ok: bool, stage: Stage, detail: String| TestReport {
            ok,
            stage: stage.as_str(),
            detail,
        };
        let Some(settings) = exchange_settings(connection) else {
            return report(
                false,
                Stage::Connect,
                "not an Exchange connection (the Exchange backend got SMTP settings)".into(),
            );
        };
        let deadline = deadline_for(settings);
        let endpoint = Endpoint::new(settings);
        let tls = if endpoint.https {
            match tls::client_config(settings) {
                Ok(c) => Some(c),
                Err(e) => return report(false, Stage::Tls, e),
            }
        } else {
            None
        };
        let credentials = match Credentials::from_settings(settings) {
            Ok(c) => c,
            Err(e) => return report(false, Stage::Auth, e),
        };
        let body = match soap::get_folder_root(settings.version) {
            Ok(b) => Bytes::from(b),
            Err(e) => return report(false, Stage::Ews, format!("cannot write the request: {e}")),
        };
        // A fresh connection, not a pooled one: the test must show that a
        // new connection can be made and authenticated now.
        let mut conn = match http::open(&endpoint, tls.as_ref(), deadline).await {
            Ok(c) => c,
            Err(f) => return report(false, f.stage, f.error.message),
        };
        let reply = match http::post(
            &mut conn,
            &endpoint,
            &credentials,
            &soap::soap_action("GetFolder"),
            body,
            deadline,
        )
        .await
        {
            Ok(r) => r,
            Err(f) => return report(false, f.stage, f.error.message),
        };
        let context = Context {
            endpoint: &endpoint,
            account: credentials.account(settings),
            sender: None,
        };
        match read_reply(&reply, &context) {
            Ok((_, build)) => {
                let who = match &context.account {
                    Some(a) => format!(" as {a} ({:?})", settings.auth),
                    None => " without authentication".into(),
                };
                let build = build
                    .map(|b| format!("; Exchange build {b}"))
                    .unwrap_or_default();
                report(
                    true,
                    Stage::Ews,
                    format!(
                        "{} answered GetFolder (msgfolderroot) with NoError{who}{build}",
                        endpoint.url
                    ),
                )
            }
            Err(e) if reply.status == StatusCode::UNAUTHORIZED => {
                report(false, Stage::Auth, e.message)
            }
            Err(e) => report(false, Stage::Ews, e.message),
        }
    }

    async fn forget(&self, connection_name: &str) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.remove(connection_name);
    }
}

/// Reads an HTTP answer: the first response message on success (with the
/// server build), or the error classified for the retry policy.
fn read_reply(
    reply: &Reply,
    context: &Context<'_>,
) -> Result<(soap::ResponseMessage, Option<String>), DeliveryError> {
    let url = &context.endpoint.url;
    let status = reply.status;
    if status == StatusCode::OK || status == StatusCode::INTERNAL_SERVER_ERROR {
        let answer = match soap::parse_answer(&reply.body) {
            Ok(a) => a,
            // EWS faults are HTTP 500 with a SOAP body; a 500 without one is
            // IIS or a proxy failing, which passes.
            Err(_) if status.is_server_error() => {
                return Err(DeliveryError::transient(format!(
                    "{url} answered HTTP {status} without a SOAP fault{}",
                    snippet(&reply.body)
                )));
            }
            Err(e) => {
                return Err(DeliveryError::permanent(format!(
                    "{url} answered HTTP {status} with something that is not an EWS answer ({e}){}",
                    snippet(&reply.body)
                )));
            }
        };
        if let Some(fault) = &answer.fault {
            return Err(classify(
                &fault.code,
                fault.words(),
                fault.value("BackOffMilliseconds"),
                context,
            ));
        }
        let Some(message) = answer.messages.into_iter().next() else {
            return Err(if status.is_server_error() {
                DeliveryError::transient(format!("{url} answered HTTP {status} without a result"))
            } else {
                DeliveryError::permanent(format!(
                    "{url} answered without a response message; nothing says the message was sent"
                ))
            });
        };
        if message.class == "Error" || (!message.code.is_empty() && message.code != "NoError") {
            return Err(classify(
                &message.code,
                &message.text,
                message.value("BackOffMilliseconds"),
                context,
            ));
        }
        return Ok((message, answer.server_build));
    }
    let offered = http::offered_schemes(&reply.headers);
    Err(match status.as_u16() {
        300..=399 => DeliveryError::permanent(format!(
            "{url} redirects (HTTP {status}) to {}; give the EWS server and path itself",
            reply
                .headers
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("elsewhere")
        )),
        401 => DeliveryError::permanent(format!(
            "authentication rejected: the server requires authentication (HTTP 401){}",
            http::offers_text(&offered)
        )),
        403 => DeliveryError::permanent(format!(
            "{url} refused access (HTTP 403 Forbidden): EWS may be disabled for this account{}",
            snippet(&reply.body)
        )),
        404 => DeliveryError::permanent(format!(
            "no EWS endpoint at {url} (HTTP 404); check the server path (usually /EWS/Exchange.asmx)"
        )),
        408 => DeliveryError::transient(format!("{url} timed out the request (HTTP 408)")),
        429 => {
            let mut e = DeliveryError::transient(format!("{url} is throttling (HTTP 429)"));
            e.retry_after = reply
                .headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            e
        }
        500..=599 => DeliveryError::transient(format!(
            "{url} answered HTTP {status}{}",
            snippet(&reply.body)
        )),
        _ => DeliveryError::permanent(format!(
            "{url} answered HTTP {status}{}",
            snippet(&reply.body)
        )),
    })
}

/// Classifies an EWS `ResponseCode` (fault or item error) with the server's
/// words, as the SPEC's delivery semantics list them.
fn classify(
    code: &str,
    words: &str,
    back_off: Option<&str>,
    context: &Context<'_>,
) -> DeliveryError {
    let code = if code.is_empty() {
        "unknown error"
    } else {
        code
    };
    match code {
        "ErrorServerBusy" => {
            let mut e = DeliveryError::transient(format!("Exchange is busy ({code}): {words}"));
            e.retry_after = back_off
                .and_then(|ms| ms.trim().parse::<u64>().ok())
                .map(Duration::from_millis);
            e
        }
        // Transient by their nature: the store or a back end was briefly
        // unavailable and the same request succeeds later.
        "ErrorInternalServerTransientError"
        | "ErrorTimeoutExpired"
        | "ErrorMailboxStoreUnavailable"
        | "ErrorMailboxMoveInProgress" => {
            DeliveryError::transient(format!("Exchange failed temporarily ({code}): {words}"))
        }
        "ErrorSendAsDenied" => {
            let sender = context.sender.unwrap_or("the sender address");
            let account = context
                .account
                .as_deref()
                .map(|a| format!("the account {a}"))
                .unwrap_or_else(|| "the account used".into());
            DeliveryError::permanent(format!(
                "the sender address {sender} differs from {account} and the Exchange server \
                 does not allow sending as it: grant the account Send As rights for that \
                 address, or use the account's own address as the sender. Exchange said \
                 ({code}): {words}"
            ))
        }
        _ => DeliveryError::permanent(format!("Exchange refused the request ({code}): {words}")),
    }
}

/// A short, single-line excerpt of an error page for messages: its HTML
/// title if it has one.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let lower = text.to_ascii_lowercase();
    let excerpt = match (lower.find("<title>"), lower.find("</title>")) {
        (Some(a), Some(b)) if a + 7 <= b => text[a + 7..b].to_string(),
        _ => text.chars().take(160).collect(),
    };
    let excerpt = excerpt.split_whitespace().collect::<Vec<_>>().join(" ");
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FailureKind;

    fn context(endpoint: &Endpoint) -> Context<'_> {
        Context {
            endpoint,
            account: Some("CORP\\alice".into()),
            sender: Some("boss@corp.example.com"),
        }
    }

    fn endpoint() -> Endpoint {
        let settings = ExchangeSettings {
            server: domain::ExchangeServer::parse("mail.example.com").unwrap(),
            version: domain::ExchangeVersion::Exchange2016,
            auth: domain::ExchangeAuth::None,
            username: String::new(),
            password: None,
            domain: String::new(),
            save_copy: false,
            allow_plain_http: false,
            trusted_ca_pem: String::new(),
            accept_invalid_certs: false,
            timeout: None,
        };
        Endpoint::new(&settings)
    }

    #[test]
    fn response_codes_are_classified_as_the_spec_says() {
        let ep = endpoint();
        let cx = context(&ep);
        let busy = classify("ErrorServerBusy", "busy", Some("1500"), &cx);
        assert_eq!(busy.kind, FailureKind::Transient);
        assert_eq!(busy.retry_after, Some(Duration::from_millis(1500)));
        for code in ["ErrorInternalServerTransientError", "ErrorTimeoutExpired"] {
            assert_eq!(classify(code, "", None, &cx).kind, FailureKind::Transient);
        }
        for code in [
            "ErrorSchemaValidation",
            "ErrorInvalidRequest",
            "ErrorInvalidServerVersion",
            "ErrorInvalidRecipients",
            "ErrorSomethingNew",
        ] {
            let e = classify(code, "words", None, &cx);
            assert_eq!(e.kind, FailureKind::Permanent, "{code}");
            assert!(e.message.contains(code) && e.message.contains("words"));
        }
        let denied = classify("ErrorSendAsDenied", "no right", None, &cx);
        assert_eq!(denied.kind, FailureKind::Permanent);
        assert!(
            denied
                .message
                .contains("boss@corp.example.com differs from the account CORP\\alice")
        );
        assert!(denied.message.contains("does not allow sending as it"));
        assert!(denied.message.contains("no right"));
    }

    #[test]
    fn http_statuses_without_soap_are_classified() {
        let ep = endpoint();
        let cx = context(&ep);
        let reply = |status: u16, body: &'static [u8]| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: Bytes::from_static(body),
        };
        for s in [500, 502, 503, 504] {
            let e =
                read_reply(&reply(s, b"<html><title>Bad gateway</title></html>"), &cx).unwrap_err();
            assert_eq!(e.kind, FailureKind::Transient, "{s}");
        }
        assert!(
            read_reply(&reply(502, b"<html><title>Bad gateway</title></html>"), &cx)
                .unwrap_err()
                .message
                .ends_with(": Bad gateway")
        );
        for s in [301, 400, 403, 404, 415] {
            let e = read_reply(&reply(s, b""), &cx).unwrap_err();
            assert_eq!(e.kind, FailureKind::Permanent, "{s}");
        }
        let e = read_reply(&reply(200, b"<html>login</html>"), &cx).unwrap_err();
        assert_eq!(e.kind, FailureKind::Permanent);
    }
}
