//! One SMTP session on lettre's low-level `AsyncSmtpConnection`: connect,
//! TLS per the connection's mode, EHLO, AUTH, then any number of mail
//! transactions. lettre's `send` stops at the first refused RCPT; the
//! transaction here issues MAIL, each RCPT and DATA itself so that one
//! refused recipient does not cost the others their mail.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lettre::transport::smtp::{
    client::{AsyncSmtpConnection, Certificate, TlsParameters},
    commands::{Data, Ehlo, Mail, Quit, Rcpt, Rset},
    extension::{ClientId, MailBodyParameter, MailParameter},
    response::Response,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;

use super::{
    Budget,
    auth::{self, Mechanism},
    failure::{Failure, Stage},
    step,
};
use crate::{
    backend::{Delivery, RejectedRecipient, mime::BuiltMessage},
    domain::{SmtpSettings, SmtpTls},
};

/// Extra time allowed for the message content on top of the per-step
/// timeout: one second per 128 KiB (about 1 Mbit/s), so that a 25 MiB
/// message on a slow link is not cut off by a timeout meant for replies.
const CONTENT_BYTES_PER_SECOND: usize = 128 * 1024;

/// What a session learnt while opening, for TestConnection's report.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub server_name: String,
    pub tls: bool,
    pub mechanism: Option<Mechanism>,
}

pub struct Session {
    conn: AsyncSmtpConnection,
    info: SessionInfo,
    /// ESMTP keywords of the last EHLO reply, upper-case, with arguments
    /// (e.g. `SIZE 10240000`).
    extensions: Vec<String>,
}

impl Session {
    /// Connects, secures, greets and authenticates as the settings say.
    pub async fn open(
        settings: &SmtpSettings,
        default_hello: &ClientId,
        budget: Budget,
    ) -> Result<Session, Failure> {
        let hello = hello_name(settings, default_hello);
        let mut conn = connect(settings, &hello, budget).await?;

        let tls_mode = settings.effective_tls();
        let wants_starttls = match tls_mode {
            SmtpTls::StartTls => {
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(Failure::permanent(
                        Stage::Tls,
                        "the server does not offer STARTTLS, and the connection requires it \
                         (tls STARTTLS); choose OPPORTUNISTIC to send without TLS when it is \
                         not offered",
                    ));
                }
                true
            }
            SmtpTls::Opportunistic => conn.can_starttls(),
            SmtpTls::Auto | SmtpTls::Implicit | SmtpTls::None => false,
        };
        if wants_starttls {
            let params = tls_parameters(settings)?;
            step(
                budget.deadline(),
                Stage::Tls,
                "the STARTTLS handshake",
                async {
                    conn.starttls(params, &hello)
                        .await
                        .map_err(|e| Failure::from_smtp(Stage::Tls, "STARTTLS failed", &e))
                },
            )
            .await?;
        }

        // lettre keeps only the EHLO keywords it knows (not CRAM-MD5, NTLM
        // or SIZE), so the reply is asked for again and read here.
        let ehlo = step(budget.deadline(), Stage::Ehlo, "the EHLO reply", async {
            conn.command(Ehlo::new(hello.clone()))
                .await
                .map_err(|e| Failure::from_smtp(Stage::Ehlo, "EHLO refused", &e))
        })
        .await?;

        let mut session = Session {
            info: SessionInfo {
                server_name: conn.server_info().name().to_owned(),
                tls: conn.is_encrypted(),
                mechanism: None,
            },
            extensions: extensions(&ehlo),
            conn,
        };

        let mechanism = auth::choose(settings, &auth::advertised_mechanisms(&ehlo))?;
        if let Some(mechanism) = mechanism {
            auth::authenticate(&mut session.conn, mechanism, settings, budget).await?;
            session.info.mechanism = Some(mechanism);
        }
        Ok(session)
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// RSET: clears any transaction state left on a reused session and
    /// proves that the server is still there.
    pub async fn reset(&mut self, budget: Budget) -> Result<(), Failure> {
        let conn = &mut self.conn;
        step(budget.deadline(), Stage::Sender, "the RSET reply", async {
            conn.command(Rset)
                .await
                .map(drop)
                .map_err(|e| Failure::from_smtp(Stage::Sender, "RSET failed", &e))
        })
        .await
    }

    /// MAIL FROM the sender, then RSET: TestConnection's last stage. No mail
    /// is sent.
    pub async fn check_sender(
        &mut self,
        sender: &lettre::Address,
        budget: Budget,
    ) -> Result<(), Failure> {
        let parameters = if AsRef::<str>::as_ref(sender).is_ascii() {
            Vec::new()
        } else {
            vec![MailParameter::SmtpUtfEight]
        };
        let conn = &mut self.conn;
        step(
            budget.deadline(),
            Stage::Sender,
            "the MAIL FROM reply",
            async {
                conn.command(Mail::new(Some(sender.clone()), parameters))
                    .await
                    .map_err(|e| {
                        Failure::from_smtp(Stage::Sender, &format!("sender <{sender}> refused"), &e)
                    })
            },
        )
        .await?;
        self.reset(budget).await
    }

    /// One mail transaction. Recipients refused one by one are reported in
    /// `Delivery::rejected` while the others get the mail; when every
    /// recipient is refused nothing is sent and the attempt fails
    /// (transient if any refusal was a 4xx, else permanent).
    ///
    /// A recipient refused with a 4xx while others were accepted is
    /// reported like a 5xx one and not retried on its own: `Delivery` has no
    /// per-recipient retry, and failing the whole attempt instead would
    /// hold everyone's mail hostage to one greylisted or over-quota box.
    pub async fn transaction(
        &mut self,
        message: &BuiltMessage,
        budget: Budget,
    ) -> Result<Delivery, Failure> {
        let envelope = &message.envelope;
        let parameters = self.mail_parameters(message)?;
        // RFC 2920: MAIL, every RCPT and DATA go out in one write and the
        // replies are read in order, one round trip instead of 2 + RCPTs.
        let pipelining = self.supports("PIPELINING");
        let conn = &mut self.conn;
        let mail = Mail::new(Some(envelope.from.clone()), parameters);
        let first = if pipelining {
            let mut group = mail.to_string();
            for recipient in &envelope.recipients {
                group.push_str(&Rcpt::new(recipient.clone(), Vec::new()).to_string());
            }
            group.push_str(&Data.to_string());
            group
        } else {
            mail.to_string()
        };

        step(
            budget.deadline(),
            Stage::Sender,
            "the MAIL FROM reply",
            async {
                conn.command(first).await.map_err(|e| {
                    Failure::from_smtp(
                        Stage::Sender,
                        &format!("sender <{}> refused", envelope.from),
                        &e,
                    )
                })
            },
        )
        .await?;

        let mut rejected = Vec::new();
        let mut any_temporary = false;
        for recipient in &envelope.recipients {
            let reply = step(
                budget.deadline(),
                Stage::Recipients,
                "the RCPT TO reply",
                async {
                    Ok(if pipelining {
                        conn.read_response().await
                    } else {
                        conn.command(Rcpt::new(recipient.clone(), Vec::new())).await
                    })
                },
            )
            .await?;
            match reply {
                Ok(_) => {}
                Err(e) => match super::failure::reply_text(&e) {
                    // A reply about this recipient; the session goes on.
                    Some(reply) => {
                        any_temporary |= e.is_transient();
                        rejected.push(RejectedRecipient {
                            address: recipient.to_string(),
                            reply,
                        });
                    }
                    // The session itself broke.
                    None => {
                        return Err(Failure::from_smtp(
                            Stage::Recipients,
                            &format!("RCPT TO <{recipient}> failed"),
                            &e,
                        )
                        .with_rejected(rejected));
                    }
                },
            }
        }
        // Pipelined, the DATA reply is then still unread: a refusal (503
        // or 554, no valid recipients) as RFC 2920 wants. The caller never
        // reuses a session after a failure.
        if rejected.len() == envelope.recipients.len() {
            let summary = rejected
                .iter()
                .map(|r| format!("<{}>: {}", r.address, r.reply))
                .collect::<Vec<_>>()
                .join("; ");
            // If any refusal was temporary a later attempt may get through.
            let failure = if any_temporary {
                Failure::transient(
                    Stage::Recipients,
                    format!("every recipient was refused: {summary}"),
                )
            } else {
                Failure::permanent(
                    Stage::Recipients,
                    format!("every recipient was refused: {summary}"),
                )
            };
            return Err(failure.with_rejected(rejected));
        }

        let data_rejected = rejected.clone();
        step(budget.deadline(), Stage::Data, "the DATA reply", async {
            let reply = if pipelining {
                conn.read_response().await
            } else {
                conn.command(Data).await
            };
            reply.map_err(|e| {
                Failure::from_smtp(Stage::Data, "DATA refused", &e).with_rejected(data_rejected)
            })
        })
        .await?;

        let content_deadline = budget.deadline_with(Duration::from_secs(
            (message.formatted.len() / CONTENT_BYTES_PER_SECOND) as u64,
        ));
        let content_rejected = rejected.clone();
        let reply = step(
            content_deadline,
            Stage::Data,
            "the reply to the message",
            async {
                conn.message(&message.formatted).await.map_err(|e| {
                    // Without a reply the server may or may not have taken
                    // the message; a retry may deliver it twice (the
                    // delivery promise is at-least-once).
                    let context = if e.status().is_some() {
                        "message refused"
                    } else {
                        "no reply to the message (it may or may not have been accepted)"
                    };
                    Failure::from_smtp(Stage::Data, context, &e).with_rejected(content_rejected)
                })
            },
        )
        .await?;

        Ok(Delivery {
            provider_message_id: response_text(&reply),
            rejected,
        })
    }

    /// QUIT, politely and briefly; the session is over either way.
    pub async fn quit(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.conn.command(Quit)).await;
    }

    fn supports(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(keyword))
    }

    fn size_limit(&self) -> Option<usize> {
        self.extensions.iter().find_map(|e| {
            let mut words = e.split_whitespace();
            (words.next() == Some("SIZE"))
                .then(|| words.next().and_then(|n| n.parse::<usize>().ok()))
                .flatten()
                .filter(|n| *n > 0)
        })
    }

    fn mail_parameters(&self, message: &BuiltMessage) -> Result<Vec<MailParameter>, Failure> {
        let mut parameters = Vec::new();
        if self.supports("SIZE") {
            let size = message.formatted.len();
            if let Some(limit) = self.size_limit()
                && size > limit
            {
                return Err(Failure::permanent(
                    Stage::Sender,
                    format!(
                        "the message is {size} bytes, the server accepts at most {limit} (SIZE)"
                    ),
                ));
            }
            parameters.push(MailParameter::Size(size));
        }
        if message.envelope.needs_smtputf8() {
            if !self.supports("SMTPUTF8") {
                return Err(Failure::permanent(
                    Stage::Sender,
                    "an address is not ASCII and the server does not offer SMTPUTF8",
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        // The MIME builder encodes everything to ASCII; only a non-ASCII
        // address in a header can make the content 8-bit.
        if !message.formatted.is_ascii() {
            if !self.supports("8BITMIME") {
                return Err(Failure::permanent(
                    Stage::Sender,
                    "the message is not ASCII and the server does not offer 8BITMIME",
                ));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(parameters)
    }
}

/// The EHLO name: the setting, else the machine's host name (lettre's
/// default, computed once by the backend). An IP address is written as an
/// address literal, as RFC 5321 wants.
fn hello_name(settings: &SmtpSettings, default: &ClientId) -> ClientId {
    let name = settings.hello_name.trim();
    if name.is_empty() {
        return default.clone();
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(name.to_owned()),
    }
}

/// TLS as the settings ask: the system roots plus `trusted_ca_pem`, or no
/// verification at all with the explicit `accept_invalid_certs` opt-out.
fn tls_parameters(settings: &SmtpSettings) -> Result<TlsParameters, Failure> {
    let host = settings.host.as_str().to_owned();
    let mut builder =
        TlsParameters::builder(host).dangerous_accept_invalid_certs(settings.accept_invalid_certs);
    if !settings.trusted_ca_pem.trim().is_empty() {
        let certificates = CertificateDer::pem_slice_iter(settings.trusted_ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Failure::permanent(Stage::Tls, format!("trusted_ca_pem is not valid PEM: {e}"))
            })?;
        if certificates.is_empty() {
            return Err(Failure::permanent(
                Stage::Tls,
                "trusted_ca_pem holds no CERTIFICATE block",
            ));
        }
        for der in certificates {
            let certificate = Certificate::from_der(der.to_vec())
                .map_err(|e| Failure::permanent(Stage::Tls, format!("trusted_ca_pem: {e}")))?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| Failure::permanent(Stage::Tls, format!("TLS settings: {e}")))
}

/// Opens the TCP (and, for implicit TLS, TLS) connection and reads the
/// greeting and lettre's own EHLO.
async fn connect(
    settings: &SmtpSettings,
    hello: &ClientId,
    budget: Budget,
) -> Result<AsyncSmtpConnection, Failure> {
    let host = settings.host.as_str();
    let port = settings.port;
    let refused_session = "the server refused the session";

    if settings.effective_tls() == SmtpTls::Implicit {
        let params = tls_parameters(settings)?;
        // Resolving first keeps a DNS failure in the connect stage; lettre's
        // connect then runs TCP, the TLS handshake, the greeting and EHLO.
        let addrs: Vec<SocketAddr> = step(budget.deadline(), Stage::Connect, "DNS", async {
            tokio::net::lookup_host((host, port))
                .await
                .map(Iterator::collect)
                .map_err(|e| {
                    Failure::transient(Stage::Connect, format!("cannot resolve {host}: {e}"))
                })
        })
        .await?;
        return step(
            budget.deadline(),
            Stage::Tls,
            "the TLS handshake and greeting",
            async {
                AsyncSmtpConnection::connect_tokio1(
                    addrs.as_slice(),
                    Some(budget.step_timeout()),
                    hello,
                    Some(params),
                    None,
                )
                .await
                .map_err(|e| {
                    let context = if e.status().is_some() {
                        refused_session.to_owned()
                    } else {
                        format!("cannot connect to {host}:{port}")
                    };
                    let f = Failure::from_smtp(Stage::Connect, &context, &e);
                    // lettre reports TCP and handshake I/O errors alike; after a
                    // TCP connect that worked, any other I/O error is the
                    // handshake's.
                    let tcp_failed = matches!(
                        super::failure::io_kind(&e),
                        Some(
                            ErrorKind::ConnectionRefused
                                | ErrorKind::TimedOut
                                | ErrorKind::HostUnreachable
                                | ErrorKind::NetworkUnreachable
                                | ErrorKind::AddrNotAvailable
                        )
                    );
                    if f.stage == Stage::Connect && e.status().is_none() && !tcp_failed {
                        Failure {
                            stage: Stage::Tls,
                            ..f
                        }
                    } else {
                        f
                    }
                })
            },
        )
        .await;
    }

    let tcp = step(
        budget.deadline(),
        Stage::Connect,
        "the TCP connection",
        async {
            TcpStream::connect((host, port)).await.map_err(|e| {
                let reason = match e.kind() {
                    ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    _ => e.to_string(),
                };
                Failure::transient(
                    Stage::Connect,
                    format!("cannot connect to {host}:{port}: {reason}"),
                )
            })
        },
    )
    .await?;
    // Commands and the message go out in several small writes; with Nagle's
    // algorithm each waits for the server's delayed ACK (40 ms on Linux).
    let _ = tcp.set_nodelay(true);
    step(
        budget.deadline(),
        Stage::Connect,
        "the server's greeting",
        async {
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), hello)
                .await
                .map_err(|e| Failure::from_smtp(Stage::Connect, refused_session, &e))
        },
    )
    .await
}

/// Keywords of an EHLO reply (every line but the first, which is the
/// server's name), upper-cased.
fn extensions(ehlo: &Response) -> Vec<String> {
    ehlo.message()
        .skip(1)
        .map(|l| l.trim().to_ascii_uppercase())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `250 2.0.0 OK: queued as ...`: the reply as the server wrote it.
fn response_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), lines.join(" "))
        .trim_end()
        .to_owned()
}
