//! HTTP/1.1 to the EWS endpoint over a connection we own.
//!
//! NTLM authenticates a TCP connection, not a request: NEGOTIATE, the 401
//! carrying the CHALLENGE, then AUTHENTICATE with the real request must all
//! travel on one kept-alive connection, and later requests on it need no
//! header at all. A pooling HTTP client may move the third leg to another
//! connection, so this module drives hyper's low-level `client::conn::http1`
//! over a TCP or rustls stream it opened itself, and the backend keeps
//! authenticated connections for reuse.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use super::tls::{self, TlsFailure};
use crate::backend::DeliveryError;
use crate::backend::ntlm;
use crate::domain::{ExchangeAuth, ExchangeSettings, Secret};

/// Answers larger than this are not EWS answers to our requests (a
/// `CreateItem` reply is a few hundred bytes); the cap keeps a misbehaving
/// server from filling memory.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const USER_AGENT_VALUE: &str = concat!("notigate/", env!("CARGO_PKG_VERSION"));

/// Where the endpoint is, resolved from the settings once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub https: bool,
    /// Host for connecting and for TLS (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    pub path: String,
    /// For messages: the full URL.
    pub url: String,
}

impl Endpoint {
    pub fn new(settings: &ExchangeSettings) -> Self {
        let https = !settings.allow_plain_http;
        let server = &settings.server;
        let host = server.host().as_str().to_owned();
        let port = server.port().unwrap_or(if https { 443 } else { 80 });
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = match server.port() {
            Some(p) => format!("{bracketed}:{p}"),
            None => bracketed,
        };
        Self {
            https,
            host,
            port,
            authority,
            path: server.path().to_owned(),
            url: server.url(settings.allow_plain_http),
        }
    }
}

/// How far a call got; a connection test reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Tls,
    Auth,
    Ews,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Ews => "ews",
        }
    }
}

/// A call that did not produce an HTTP answer (or produced a 401).
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub error: DeliveryError,
    /// The connection died before an answer came. On a reused connection
    /// that is usually the server having closed it while idle; one retry on
    /// a fresh connection is then the right move.
    pub connection_lost: bool,
}

impl Failure {
    fn new(stage: Stage, error: DeliveryError) -> Self {
        Self {
            stage,
            error,
            connection_lost: false,
        }
    }
}

/// What the settings say to authenticate with.
pub enum Credentials {
    None,
    /// The complete `Authorization` value, marked sensitive.
    Basic(HeaderValue),
    Ntlm {
        user: String,
        domain: String,
        password: Secret,
    },
}

impl Credentials {
    /// `Err` is a configuration problem (permanent).
    pub fn from_settings(settings: &ExchangeSettings) -> Result<Self, String> {
        let password = || {
            settings
                .password
                .clone()
                .ok_or_else(|| format!("auth {:?} needs a password", settings.auth))
        };
        match settings.auth {
            ExchangeAuth::None => Ok(Credentials::None),
            ExchangeAuth::Basic => {
                let password = password()?;
                // IIS Basic takes `DOMAIN\user` or a UPN; a bare user name
                // is qualified with the configured domain.
                let token = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    qualified_user(settings),
                    password.expose()
                ));
                let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| "the user name cannot go into an HTTP header".to_string())?;
                value.set_sensitive(true);
                Ok(Credentials::Basic(value))
            }
            ExchangeAuth::Ntlm => {
                let password = password()?;
                // Checked here so that a bad name is a configuration error
                // before any connection is made.
                ntlm::username(&settings.username, &settings.domain)?;
                Ok(Credentials::Ntlm {
                    user: settings.username.clone(),
                    domain: settings.domain.clone(),
                    password,
                })
            }
        }
    }

    /// Who we authenticate as, for messages.
    pub fn account(&self, settings: &ExchangeSettings) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Basic(_) | Credentials::Ntlm { .. } => Some(qualified_user(settings)),
        }
    }
}

/// The user name with its domain: as given when it names one (`DOMAIN\user`,
/// `user@upn.suffix`) or no domain is set, else `DOMAIN\user`.
fn qualified_user(settings: &ExchangeSettings) -> String {
    let user = &settings.username;
    if settings.domain.is_empty() || user.contains('\\') || user.contains('@') {
        user.clone()
    } else {
        format!("{}\\{user}", settings.domain)
    }
}

/// One HTTP/1.1 connection to the endpoint.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `tls-server-end-point` data of this connection's server certificate.
    channel_binding: Option<Vec<u8>>,
    /// NTLM completed on this connection: it is authenticated as our user.
    ntlm_done: bool,
    pub idle_since: std::time::Instant,
}

impl Conn {
    /// Still open as far as we can tell without using it.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// An HTTP answer, body read completely (also for 401s: IIS closes a
/// connection whose 401 body was left unread, and NTLM needs it open).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Opens a connection: TCP, then TLS unless the endpoint is plain HTTP.
pub async fn open(
    ep: &Endpoint,
    tls_config: Option<&Arc<ClientConfig>>,
    deadline: Instant,
) -> Result<Conn, Failure> {
    let timed_out = |stage: Stage, what: &str| {
        Failure::new(
            stage,
            DeliveryError::transient(format!("timed out {what} {}", ep.url)),
        )
    };
    let tcp = timeout_at(deadline, connect_tcp(ep))
        .await
        .map_err(|_| timed_out(Stage::Connect, "connecting to"))??;
    // Requests are small and latency-bound; no Nagle delay between the
    // headers and the body.
    let _ = tcp.set_nodelay(true);

    if !ep.https {
        return handshake(tcp, None).await;
    }
    let Some(config) = tls_config else {
        return Err(Failure::new(
            Stage::Tls,
            DeliveryError::permanent("internal error: HTTPS without a TLS configuration"),
        ));
    };
    let name = tls::server_name(&ep.host)
        .map_err(|e| Failure::new(Stage::Tls, DeliveryError::permanent(e)))?;
    let stream = timeout_at(
        deadline,
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        // A plain-HTTP server waits for a request line that a ClientHello
        // never completes, so this is how that mistake usually shows.
        Failure::new(
            Stage::Tls,
            DeliveryError::transient(format!(
                "timed out in the TLS handshake with {} (if the server speaks plain \
                 HTTP on this port, set allow_plain_http)",
                ep.url
            )),
        )
    })?
    .map_err(|e| {
        let error = match tls::classify_handshake_error(&e) {
            TlsFailure::Certificate(m) | TlsFailure::Protocol(m) => DeliveryError::permanent(m),
            TlsFailure::Io(m) => DeliveryError::transient(m),
        };
        Failure::new(Stage::Tls, error)
    })?;
    let channel_binding = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| tls::tls_server_end_point(cert.as_ref()));
    handshake(stream, channel_binding).await
}

async fn connect_tcp(ep: &Endpoint) -> Result<TcpStream, Failure> {
    let fail = |e: std::io::Error| {
        Failure::new(
            Stage::Connect,
            DeliveryError::transient(format!(
                "cannot connect to {}:{}: {e}",
                ep.authority_host(),
                ep.port
            )),
        )
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(fail)?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(fail(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
    })))
}

impl Endpoint {
    fn authority_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

async fn handshake<S>(stream: S, channel_binding: Option<Vec<u8>>) -> Result<Conn, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            Failure::new(
                Stage::Connect,
                DeliveryError::transient(format!("HTTP connection setup failed: {e}")),
            )
        })?;
    // The connection future does the I/O; it ends when the sender is dropped
    // or the server closes. Its error, if any, reaches us through the sender.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "EWS connection closed");
        }
    });
    Ok(Conn {
        sender,
        channel_binding,
        ntlm_done: false,
        idle_since: std::time::Instant::now(),
    })
}

/// POSTs one SOAP request with the configured authentication. A 401 that
/// remains after authenticating is a `Failure` at stage `auth`; every other
/// HTTP answer is returned for the caller to read.
pub async fn post(
    conn: &mut Conn,
    ep: &Endpoint,
    credentials: &Credentials,
    action: &str,
    body: Bytes,
    deadline: Instant,
) -> Result<Reply, Failure> {
    match credentials {
        Credentials::None => send(conn, ep, action, body, None, Stage::Ews, deadline).await,
        Credentials::Basic(value) => {
            let reply = send(
                conn,
                ep,
                action,
                body,
                Some(value.clone()),
                Stage::Ews,
                deadline,
            )
            .await?;
            if reply.status == StatusCode::UNAUTHORIZED {
                return Err(rejected(&reply, "Basic"));
            }
            Ok(reply)
        }
        Credentials::Ntlm {
            user,
            domain,
            password,
        } => {
            if conn.ntlm_done {
                let reply =
                    send(conn, ep, action, body.clone(), None, Stage::Ews, deadline).await?;
                if reply.status != StatusCode::UNAUTHORIZED {
                    return Ok(reply);
                }
                // The server dropped the connection's authentication (an
                // IIS setting can make it per request): authenticate again.
                conn.ntlm_done = false;
            }
            let reply =
                ntlm_handshake(conn, ep, (user, domain, password), action, body, deadline).await?;
            conn.ntlm_done = true;
            Ok(reply)
        }
    }
}

async fn ntlm_handshake(
    conn: &mut Conn,
    ep: &Endpoint,
    (user, domain, password): (&str, &str, &Secret),
    action: &str,
    body: Bytes,
    deadline: Instant,
) -> Result<Reply, Failure> {
    let auth_failure = |m: String| Failure::new(Stage::Auth, DeliveryError::permanent(m));
    // "NTLM" is what Exchange offers next to "Negotiate"; a server offering
    // only Negotiate takes a raw NTLM token under that name as well.
    let mut scheme = "NTLM";
    loop {
        let (handshake, negotiate) = ntlm::Handshake::start(
            user,
            domain,
            password.expose(),
            conn.channel_binding.as_deref(),
        )
        .map_err(auth_failure)?;
        // The NEGOTIATE leg carries no body: the server answers it with a
        // 401 anyway, and attachments need not travel twice.
        let first = send(
            conn,
            ep,
            action,
            Bytes::new(),
            Some(token_header(scheme, &negotiate)?),
            Stage::Auth,
            deadline,
        )
        .await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Err(auth_failure(format!(
                "the server answered the NTLM negotiation with HTTP {} instead of a challenge",
                first.status
            )));
        }
        let Some(challenge) = challenge_token(&first.headers, scheme) else {
            let offered = offered_schemes(&first.headers);
            if scheme == "NTLM" && offered.iter().any(|s| s.eq_ignore_ascii_case("Negotiate")) {
                scheme = "Negotiate";
                continue;
            }
            return Err(auth_failure(format!(
                "the server does not offer NTLM (Windows authentication){}",
                offers_text(&offered)
            )));
        };
        let authenticate = handshake.respond(&challenge).map_err(auth_failure)?;
        let reply = send(
            conn,
            ep,
            action,
            body,
            Some(token_header(scheme, &authenticate)?),
            Stage::Ews,
            deadline,
        )
        .await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            return Err(rejected(&reply, "NTLM"));
        }
        return Ok(reply);
    }
}

fn token_header(scheme: &str, token: &[u8]) -> Result<HeaderValue, Failure> {
    let value = format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    );
    let mut value = HeaderValue::from_str(&value).map_err(|e| {
        Failure::new(
            Stage::Auth,
            DeliveryError::permanent(format!("NTLM token unusable as a header: {e}")),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The base64 token of `WWW-Authenticate: <scheme> <token>`, decoded.
fn challenge_token(headers: &HeaderMap, scheme: &str) -> Option<Vec<u8>> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (name, token) = v.trim().split_once(' ')?;
            if !name.eq_ignore_ascii_case(scheme) {
                return None;
            }
            base64::engine::general_purpose::STANDARD
                .decode(token.trim())
                .ok()
                .filter(|t| !t.is_empty())
        })
}

/// The scheme names of every `WWW-Authenticate` header.
pub fn offered_schemes(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

pub fn offers_text(offered: &[String]) -> String {
    if offered.is_empty() {
        String::new()
    } else {
        format!("; it offers: {}", offered.join(", "))
    }
}

fn rejected(reply: &Reply, scheme: &str) -> Failure {
    Failure::new(
        Stage::Auth,
        DeliveryError::permanent(format!(
            "authentication rejected: the server refused the {scheme} credentials \
             (HTTP 401; check username, password and domain){}",
            offers_text(&offered_schemes(&reply.headers))
        )),
    )
}

async fn send(
    conn: &mut Conn,
    ep: &Endpoint,
    action: &str,
    body: Bytes,
    authorization: Option<HeaderValue>,
    stage: Stage,
    deadline: Instant,
) -> Result<Reply, Failure> {
    let mut request = Request::post(ep.path.as_str())
        .header(HOST, ep.authority.as_str())
        // EWS answers anything but text/xml with 415.
        .header(CONTENT_TYPE, "text/xml; charset=utf-8")
        .header(ACCEPT, "text/xml")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header("SOAPAction", action)
        .body(Full::new(body))
        .map_err(|e| {
            Failure::new(
                Stage::Ews,
                DeliveryError::permanent(format!("cannot build the request: {e}")),
            )
        })?;
    if let Some(value) = authorization {
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let exchange = async {
        conn.sender.ready().await?;
        let response = conn.sender.send_request(request).await?;
        let (parts, incoming) = response.into_parts();
        let body = Limited::new(incoming, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(BodyError)?
            .to_bytes();
        Ok::<_, SendError>(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match timeout_at(deadline, exchange).await {
        Ok(Ok(reply)) => {
            conn.idle_since = std::time::Instant::now();
            Ok(reply)
        }
        Ok(Err(SendError::Hyper(e))) => Err(Failure {
            stage,
            error: DeliveryError::transient(format!("connection to {} failed: {e}", ep.url)),
            connection_lost: e.is_canceled() || e.is_closed() || e.is_incomplete_message(),
        }),
        Ok(Err(SendError::Body(e))) => Err(Failure::new(
            stage,
            DeliveryError::transient(format!("reading the answer of {} failed: {}", ep.url, e.0)),
        )),
        Err(_) => Err(Failure::new(
            stage,
            DeliveryError::transient(format!("timed out waiting for {}", ep.url)),
        )),
    }
}

struct BodyError(Box<dyn std::error::Error + Send + Sync>);

enum SendError {
    Hyper(hyper::Error),
    Body(BodyError),
}

impl From<hyper::Error> for SendError {
    fn from(e: hyper::Error) -> Self {
        SendError::Hyper(e)
    }
}

impl From<BodyError> for SendError {
    fn from(e: BodyError) -> Self {
        SendError::Body(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_is_found_under_its_scheme() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("NTLM TlRMTVNTUAACAAAA"),
        );
        assert_eq!(challenge_token(&h, "NTLM").unwrap()[..8], *b"NTLMSSP\0");
        assert_eq!(challenge_token(&h, "Negotiate"), None);
        assert_eq!(offered_schemes(&h), vec!["Negotiate", "NTLM"]);
    }
}
