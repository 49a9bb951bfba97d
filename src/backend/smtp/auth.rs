//! SMTP AUTH: which mechanism to use and how to run it on the session that
//! then sends the mail.
//!
//! PLAIN, LOGIN and XOAUTH2 are lettre's own. CRAM-MD5 (RFC 2195) and NTLM
//! (MS-SMTPNTLM, NTLMv2 messages from `sspi`) are exchanges lettre does not
//! know; they run here line by line through `AsyncSmtpConnection::command`.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, KeyInit, Mac};
use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism as LettreMechanism},
    client::AsyncSmtpConnection,
    response::Response,
};
use md5::Md5;

use super::{
    Budget,
    failure::{Failure, Stage},
    step,
};
use crate::{
    backend::ntlm,
    domain::{SmtpAuth, SmtpSettings},
};

/// The mechanisms notigate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    Ntlm,
    Xoauth2,
}

impl Mechanism {
    /// The name in the EHLO `AUTH` line and the `AUTH` command.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Ntlm => "NTLM",
            Mechanism::Xoauth2 => "XOAUTH2",
        }
    }
}

/// SPEC: negotiation picks from what the server advertises in this order;
/// XOAUTH2 (and GSSAPI) only when chosen explicitly.
const NEGOTIATION_ORDER: [Mechanism; 4] = [
    Mechanism::Ntlm,
    Mechanism::CramMd5,
    Mechanism::Plain,
    Mechanism::Login,
];

/// Decides the mechanism from the settings and the mechanisms the server
/// advertised (upper-case names from its EHLO `AUTH` line). `None`: the
/// session does not authenticate.
pub fn choose(
    settings: &SmtpSettings,
    advertised: &[String],
) -> Result<Option<Mechanism>, Failure> {
    let offers = |m: Mechanism| advertised.iter().any(|a| a == m.name());
    let offered = || {
        if advertised.is_empty() {
            "it advertises no AUTH at all".to_owned()
        } else {
            format!("it offers {}", advertised.join(" "))
        }
    };
    let explicit = match settings.auth {
        SmtpAuth::None => return Ok(None),
        SmtpAuth::Negotiate if settings.username.is_empty() => return Ok(None),
        SmtpAuth::Negotiate => {
            return match NEGOTIATION_ORDER.into_iter().find(|m| offers(*m)) {
                Some(m) => Ok(Some(m)),
                // Never fall back to sending without authentication: the
                // user asked for it by setting a username.
                None => Err(Failure::permanent(
                    Stage::Auth,
                    format!(
                        "a username is set but the server advertises none of the mechanisms \
                         notigate negotiates (NTLM, CRAM-MD5, PLAIN, LOGIN): {}; not sending \
                         without authentication",
                        offered()
                    ),
                )),
            };
        }
        SmtpAuth::Plain => Mechanism::Plain,
        SmtpAuth::Login => Mechanism::Login,
        SmtpAuth::CramMd5 => Mechanism::CramMd5,
        SmtpAuth::Ntlm => Mechanism::Ntlm,
        SmtpAuth::Xoauth2 => Mechanism::Xoauth2,
    };
    if offers(explicit) {
        Ok(Some(explicit))
    } else {
        Err(Failure::permanent(
            Stage::Auth,
            format!(
                "the server does not offer AUTH {} ({})",
                explicit.name(),
                offered()
            ),
        ))
    }
}

/// Parses the mechanisms out of an EHLO reply (`AUTH PLAIN LOGIN ...`, and
/// the pre-RFC `AUTH=...` form some old servers still send).
pub fn advertised_mechanisms(ehlo: &Response) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    // The first line is the server's name and greeting, not a keyword.
    for line in ehlo.message().skip(1) {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let upper = keyword.to_ascii_uppercase();
        let rest: Vec<&str> = if upper == "AUTH" {
            words.collect()
        } else if let Some(first) = upper.strip_prefix("AUTH=") {
            std::iter::once(&keyword[keyword.len() - first.len()..])
                .chain(words)
                .collect()
        } else {
            continue;
        };
        for m in rest {
            let m = m.to_ascii_uppercase();
            if !m.is_empty() && !found.contains(&m) {
                found.push(m);
            }
        }
    }
    found
}

/// Runs `mechanism` on the session. A 535 comes back as a permanent
/// failure with the server's reply, the password never in it.
pub async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    mechanism: Mechanism,
    settings: &SmtpSettings,
    budget: Budget,
) -> Result<(), Failure> {
    let Some(password) = settings.password.as_ref().map(|p| p.expose()) else {
        return Err(Failure::permanent(
            Stage::Auth,
            format!(
                "AUTH {} needs a password and none is stored for this connection",
                mechanism.name()
            ),
        ));
    };
    let user = settings.username.as_str();
    let secrets = secrets(user, password);
    let what = format!("the AUTH {} exchange", mechanism.name());
    let result = match mechanism {
        Mechanism::Plain | Mechanism::Login | Mechanism::Xoauth2 => {
            let lettre_mechanism = match mechanism {
                Mechanism::Plain => LettreMechanism::Plain,
                Mechanism::Login => LettreMechanism::Login,
                _ => LettreMechanism::Xoauth2,
            };
            let credentials = Credentials::new(user.to_owned(), password.to_owned());
            step(budget.deadline(), Stage::Auth, &what, async {
                conn.auth(&[lettre_mechanism], &credentials)
                    .await
                    .map(drop)
                    .map_err(|e| Failure::from_smtp(Stage::Auth, "authentication rejected", &e))
            })
            .await
        }
        Mechanism::CramMd5 => {
            step(
                budget.deadline(),
                Stage::Auth,
                &what,
                cram_md5(conn, user, password),
            )
            .await
        }
        Mechanism::Ntlm => {
            step(
                budget.deadline(),
                Stage::Auth,
                &what,
                ntlm(conn, user, &settings.domain, password),
            )
            .await
        }
    };
    result.map_err(|f| f.redact(&secrets))
}

/// Everything derived from the password that a server could echo back in
/// an error reply: the password itself and the base64 lines carrying it.
fn secrets(user: &str, password: &str) -> Vec<String> {
    vec![
        password.to_owned(),
        B64.encode(password),
        B64.encode(format!("\0{user}\0{password}")),
        B64.encode(format!("user={user}\x01auth=Bearer {password}\x01\x01")),
    ]
}

/// One raw command line. Only base64 and fixed keywords are ever sent
/// through it, so no CR/LF can come from user data.
struct Line<'a>(&'a str);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

async fn send(
    conn: &mut AsyncSmtpConnection,
    line: &str,
    context: &str,
) -> Result<Response, Failure> {
    conn.command(Line(line))
        .await
        .map_err(|e| Failure::from_smtp(Stage::Auth, context, &e))
}

/// Expects `334 <base64>` and returns the decoded challenge.
fn challenge(response: &Response, mechanism: &str) -> Result<Vec<u8>, Failure> {
    if !response.has_code(334) {
        return Err(Failure::permanent(
            Stage::Auth,
            format!(
                "AUTH {mechanism}: expected a 334 challenge, got {}",
                response.code()
            ),
        ));
    }
    let encoded = response.first_word().unwrap_or("");
    B64.decode(encoded).map_err(|e| {
        Failure::permanent(
            Stage::Auth,
            format!("AUTH {mechanism}: the server's challenge is not base64 ({e})"),
        )
    })
}

async fn cram_md5(
    conn: &mut AsyncSmtpConnection,
    user: &str,
    password: &str,
) -> Result<(), Failure> {
    let response = send(conn, "AUTH CRAM-MD5", "AUTH CRAM-MD5 refused").await?;
    let challenge = challenge(&response, "CRAM-MD5")?;
    let answer = B64.encode(format!("{user} {}", cram_md5_digest(password, &challenge)));
    send(conn, &answer, "authentication rejected").await?;
    Ok(())
}

/// RFC 2195: lower-case hex of HMAC-MD5 keyed with the password.
fn cram_md5_digest(password: &str, challenge: &[u8]) -> String {
    // HMAC accepts keys of any length (long ones are hashed first), so
    // new_from_slice cannot fail here.
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(password.as_bytes()) else {
        return String::new();
    };
    mac.update(challenge);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn ntlm(
    conn: &mut AsyncSmtpConnection,
    user: &str,
    domain: &str,
    password: &str,
) -> Result<(), Failure> {
    let (handshake, negotiate) =
        ntlm::Handshake::start(user, domain, password, None).map_err(ntlm_error)?;
    let negotiate = B64.encode(negotiate);
    // MS-SMTPNTLM: the server answers `334 NTLM supported` (Exchange) or a
    // bare `334` (Cyrus); either way it then wants the NEGOTIATE message.
    // Sending NEGOTIATE as an initial response would save a round trip but
    // not every server accepts it.
    send(conn, "AUTH NTLM", "AUTH NTLM refused").await?;
    let response = send(conn, &negotiate, "AUTH NTLM refused the NEGOTIATE message").await?;
    let challenge = challenge(&response, "NTLM")?;
    let authenticate = B64.encode(handshake.respond(&challenge).map_err(ntlm_error)?);
    send(conn, &authenticate, "authentication rejected").await?;
    Ok(())
}

fn ntlm_error(message: String) -> Failure {
    Failure::permanent(Stage::Auth, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{HostName, Secret, SmtpTls};

    fn settings(auth: SmtpAuth, username: &str) -> SmtpSettings {
        SmtpSettings {
            host: HostName::parse("127.0.0.1").unwrap(),
            port: 25,
            tls: SmtpTls::None,
            trusted_ca_pem: String::new(),
            accept_invalid_certs: false,
            auth,
            username: username.into(),
            password: Some(Secret::new("pw")),
            domain: String::new(),
            hello_name: String::new(),
            timeout: None,
        }
    }

    fn offers(list: &str) -> Vec<String> {
        list.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn negotiation_prefers_ntlm_then_cram_md5_then_plain_then_login() {
        let s = settings(SmtpAuth::Negotiate, "alice");
        let pick = |list| choose(&s, &offers(list)).unwrap();
        assert_eq!(pick("LOGIN PLAIN CRAM-MD5 NTLM"), Some(Mechanism::Ntlm));
        assert_eq!(pick("LOGIN PLAIN CRAM-MD5"), Some(Mechanism::CramMd5));
        assert_eq!(pick("LOGIN PLAIN XOAUTH2"), Some(Mechanism::Plain));
        assert_eq!(pick("LOGIN"), Some(Mechanism::Login));
    }

    #[test]
    fn negotiation_without_a_common_mechanism_is_a_permanent_failure() {
        let s = settings(SmtpAuth::Negotiate, "alice");
        for list in ["", "XOAUTH2 GSSAPI"] {
            let err = choose(&s, &offers(list)).unwrap_err();
            assert_eq!(err.kind, crate::backend::FailureKind::Permanent);
            assert_eq!(err.stage, Stage::Auth);
            assert!(err.message.contains("not sending without authentication"));
        }
    }

    #[test]
    fn no_username_or_auth_none_means_no_auth() {
        assert_eq!(
            choose(&settings(SmtpAuth::Negotiate, ""), &offers("PLAIN")).unwrap(),
            None
        );
        assert_eq!(
            choose(&settings(SmtpAuth::None, "alice"), &offers("PLAIN")).unwrap(),
            None
        );
    }

    #[test]
    fn an_explicit_mechanism_must_be_offered() {
        let s = settings(SmtpAuth::CramMd5, "alice");
        assert_eq!(
            choose(&s, &offers("CRAM-MD5")).unwrap(),
            Some(Mechanism::CramMd5)
        );
        let err = choose(&s, &offers("PLAIN LOGIN")).unwrap_err();
        assert!(
            err.message.contains("does not offer AUTH CRAM-MD5"),
            "{err}"
        );
        assert!(err.message.contains("PLAIN LOGIN"), "{err}");
    }

    #[test]
    fn auth_lines_are_parsed_in_both_forms() {
        use lettre::transport::smtp::response::{Category, Code, Detail, Severity};
        let response = Response::new(
            Code::new(
                Severity::PositiveCompletion,
                Category::MailSystem,
                Detail::Zero,
            ),
            vec![
                "mail.example.com Hello".into(),
                "SIZE 1000".into(),
                "AUTH PLAIN login CRAM-MD5".into(),
                "AUTH=NTLM LOGIN".into(),
            ],
        );
        assert_eq!(
            advertised_mechanisms(&response),
            ["PLAIN", "LOGIN", "CRAM-MD5", "NTLM"]
        );
    }

    #[test]
    fn cram_md5_matches_the_rfc_2195_example() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            cram_md5_digest("tanstaaftanstaaf", challenge),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
    }
}
