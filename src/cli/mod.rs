//! The command-line client in the `notigate` binary: `notigate connection …`,
//! `notigate send`, `notigate status` talk gRPC to a running gateway
//! (`--server`, `--token`); `notigate token create` edits a tokens file
//! locally. Output is compact key-value lines and tables for people, or with
//! `--json` the response message as proto3 JSON (as grpcurl prints it).
//!
//! Every failure ends in one place, [`finish`]: `notigate: error: …` on
//! stderr (with each `BadRequest` field violation on its own line) and exit
//! code 1.

mod connection;
mod json;
mod notify;
mod table;
mod token;
mod values;

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::StatusExt;

pub use connection::ConnectionArgs;
pub use notify::{SendArgs, StatusArgs};
pub use token::TokenArgs;

use crate::pb::{connection_admin_client::ConnectionAdminClient, notifier_client::NotifierClient};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How to reach the gateway and how to print; shared by every client command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Gateway")]
pub struct ClientArgs {
    /// Gateway address: http://HOST:PORT, or https://HOST:PORT for a server
    /// with TLS.
    #[arg(
        long,
        global = true,
        env = "NOTIGATE_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token, sent as `authorization: Bearer TOKEN` on every call
    /// (prefer the environment variable: a flag shows in `ps`).
    #[arg(
        long,
        global = true,
        env = "NOTIGATE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the response as proto3 JSON, as grpcurl does.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM file with the CA certificate(s) that signed an https:// server's
    /// certificate [default: the public web roots].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for a gateway that requires one (mTLS; with
    /// --client-key).
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The gateway answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] Status),
    #[error(
        "cannot connect to notigate at {server}: {detail} (is `notigate serve` running there? \
         set --server or NOTIGATE_SERVER)"
    )]
    Connect { server: String, detail: String },
    /// Bad input found before any call: a file that cannot be read, a flag
    /// combination that makes no sense.
    #[error("{0}")]
    Input(String),
}

impl CliError {
    fn input(message: impl Into<String>) -> CliError {
        CliError::Input(message.into())
    }

    /// The lines printed to stderr.
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("notigate: error: {self}")];
        if let CliError::Status(status) = self
            && let Some(bad) = status.get_error_details().bad_request()
        {
            for v in &bad.field_violations {
                lines.push(format!("  {}: {}", v.field, v.description));
            }
        }
        lines
    }
}

/// The canonical gRPC name of a code (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a command that ran to the end reports: success, or a result that is
/// not an error of the call but still a failure for scripts (a connection
/// test that failed, a notification that ended FAILED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    NotOk,
}

/// Runs a client command on a small runtime and turns its result into the
/// exit code, printing the error if there is one.
fn finish<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = Result<Outcome, CliError>>,
{
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the async runtime: {e}")))
        .and_then(|runtime| runtime.block_on(future));
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::NotOk) => ExitCode::FAILURE,
        Err(e) => {
            let mut stderr = std::io::stderr().lock();
            for line in e.lines() {
                let _ = writeln!(stderr, "{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `notigate connection …`
pub fn connection(args: ConnectionArgs) -> ExitCode {
    finish(connection::run(args))
}

/// `notigate send …`
pub fn send(args: SendArgs) -> ExitCode {
    finish(notify::send(args))
}

/// `notigate status …`
pub fn status(args: StatusArgs) -> ExitCode {
    finish(notify::status(args))
}

/// `notigate token …`
pub fn token(args: TokenArgs) -> ExitCode {
    finish(async move { token::run(args) })
}

/// A connected channel plus the metadata every call carries.
struct Client {
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
}

impl Client {
    async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
        let server = if args.server.contains("://") {
            args.server.clone()
        } else {
            format!("http://{}", args.server)
        };
        let mut endpoint = Endpoint::from_shared(server.clone())
            .map_err(|_| {
                CliError::input(format!(
                    "--server {:?} is not a URL such as {DEFAULT_SERVER}",
                    args.server
                ))
            })?
            .connect_timeout(Duration::from_secs(10));
        if server.starts_with("https://") {
            let read = |flag: &str, path: &PathBuf| {
                std::fs::read(path).map_err(|e| {
                    CliError::input(format!("cannot read {flag} {}: {e}", path.display()))
                })
            };
            let mut tls = match &args.ca_cert {
                Some(path) => ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read("--ca-cert", path)?)),
                None => ClientTlsConfig::new()
                    .trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            };
            if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read("--client-cert", cert)?,
                    read("--client-key", key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::input(format!("TLS settings: {}", error_chain(&e))))?;
        } else if args.ca_cert.is_some() || args.client_cert.is_some() {
            return Err(CliError::input(
                "--ca-cert and --client-cert need an https:// --server".to_string(),
            ));
        }
        let authorization = match &args.token {
            Some(token) if !token.is_empty() => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| CliError::input("--token holds characters a header cannot"))?,
            ),
            _ => None,
        };
        let channel = endpoint.connect().await.map_err(|e| CliError::Connect {
            server: server.clone(),
            detail: error_chain(&e),
        })?;
        Ok(Client {
            channel,
            authorization,
        })
    }

    /// A request carrying the bearer token, if there is one.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    fn admin(&self) -> ConnectionAdminClient<Channel> {
        ConnectionAdminClient::new(self.channel.clone())
    }

    fn notifier(&self) -> NotifierClient<Channel> {
        NotifierClient::new(self.channel.clone())
    }
}

/// An error and its sources, `: `-separated ("transport error" alone says
/// nothing; its source says "Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Prints a JSON value as grpcurl does: pretty, two-space indent.
fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("notigate: error: cannot print JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        crate::config::Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_request_prints_every_field_on_its_own_line() {
        let details = tonic_types::ErrorDetails::with_bad_request(vec![
            tonic_types::FieldViolation::new("connection.smtp.port", "70000 is out of range"),
            tonic_types::FieldViolation::new("connection.sender.address", "is required"),
        ]);
        let status = Status::with_error_details(
            tonic::Code::InvalidArgument,
            "connection.smtp.port: 70000 is out of range; connection.sender.address: is required",
            details,
        );
        let lines = CliError::Status(status).lines();
        assert_eq!(
            lines,
            [
                "notigate: error: INVALID_ARGUMENT: connection.smtp.port: 70000 is out of range; \
                 connection.sender.address: is required",
                "  connection.smtp.port: 70000 is out of range",
                "  connection.sender.address: is required",
            ]
        );
    }
}
