//! Command line, environment and TOML file → [`Config`]. Precedence: flag >
//! environment (`NOTIGATE_*`) > file (`--config`) > default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::{
    api::{MessageLimits, SendLimits},
    dispatch::{DispatchConfig, RetryPolicy},
    store::KeySource,
};

#[derive(Debug, Parser)]
#[command(
    name = "notigate",
    version,
    about = "gRPC notification gateway: e-mail over SMTP and Microsoft Exchange"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage the outgoing mail connections on a running gateway.
    Connection(crate::cli::ConnectionArgs),
    /// Send an e-mail through a running gateway.
    Send(crate::cli::SendArgs),
    /// Show a notification's delivery state (--watch: follow it).
    Status(crate::cli::StatusArgs),
    /// Create bearer tokens for the server's --tokens-file.
    Token(crate::cli::TokenArgs),
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with `_`).
    #[arg(long, env = "NOTIGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "NOTIGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Database and generated master key [default: ./notigate-data].
    #[arg(long, env = "NOTIGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File with the master key that seals stored passwords (32 bytes, base64
    /// or hex). The key itself may instead be given in NOTIGATE_MASTER_KEY.
    /// With neither, one is generated as <data-dir>/master.key.
    #[arg(long, env = "NOTIGATE_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Allow a non-loopback --listen address without tokens and TLS.
    #[arg(long, env = "NOTIGATE_INSECURE")]
    pub insecure: bool,
    /// Bearer tokens (hashed, with roles); see `notigate token create`.
    /// Without it every caller is trusted, and only loopback is served.
    #[arg(long, env = "NOTIGATE_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the gRPC listener (with --tls-key).
    #[arg(long, env = "NOTIGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "NOTIGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate it signed (mTLS).
    #[arg(long, env = "NOTIGATE_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Per-connection file logs [default: <data-dir>/logs].
    #[arg(long, env = "NOTIGATE_LOG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Days of rotated per-connection log files kept [default: 14].
    #[arg(long, env = "NOTIGATE_LOG_KEEP_DAYS", value_name = "N")]
    pub log_keep_days: Option<usize>,
    /// Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "NOTIGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format on stderr: text or json [default: text]. Filter with RUST_LOG.
    #[arg(long, env = "NOTIGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest message Send accepts: subject, bodies and attachments
    /// together (e.g. 25MiB) [default: 25MiB].
    #[arg(long, env = "NOTIGATE_MAX_MESSAGE_SIZE", value_name = "SIZE")]
    pub max_message_size: Option<String>,
    /// Largest gRPC request decoded; above the message limit so that the
    /// precise RESOURCE_EXHAUSTED comes from notigate [default: 64MiB].
    #[arg(long, env = "NOTIGATE_GRPC_MAX_MESSAGE_SIZE", value_name = "SIZE")]
    pub grpc_max_message_size: Option<String>,
    /// Most recipients (to, cc and bcc together) per message [default: 100].
    #[arg(long, env = "NOTIGATE_MAX_RECIPIENTS", value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Most notifications waiting in the outbox; beyond it Send answers
    /// RESOURCE_EXHAUSTED [default: 1000000].
    #[arg(long, env = "NOTIGATE_MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<usize>,
    /// Delivery attempts running at once per connection [default: 8].
    #[arg(long, env = "NOTIGATE_CONNECTION_CONCURRENCY", value_name = "N")]
    pub connection_concurrency: Option<usize>,
    /// Delay before the first retry [default: 2s].
    #[arg(long, env = "NOTIGATE_RETRY_INITIAL", value_name = "DURATION")]
    pub retry_initial: Option<String>,
    /// Factor by which each further retry waits longer [default: 2].
    #[arg(long, env = "NOTIGATE_RETRY_MULTIPLIER", value_name = "X")]
    pub retry_multiplier: Option<f64>,
    /// Longest wait between attempts [default: 5m].
    #[arg(long, env = "NOTIGATE_RETRY_MAX_DELAY", value_name = "DURATION")]
    pub retry_max_delay: Option<String>,
    /// Random spread of each wait, as a fraction [default: 0.2].
    #[arg(long, env = "NOTIGATE_RETRY_JITTER", value_name = "FRACTION")]
    pub retry_jitter: Option<f64>,
    /// Give up retrying a notification this old [default: 24h].
    #[arg(long, env = "NOTIGATE_RETRY_MAX_AGE", value_name = "DURATION")]
    pub retry_max_age: Option<String>,
    /// Give up after this many attempts; 0 = no limit but the age [default: 0].
    #[arg(long, env = "NOTIGATE_RETRY_MAX_ATTEMPTS", value_name = "N")]
    pub retry_max_attempts: Option<u32>,
    /// How long delivered, failed and canceled notifications are kept [default: 7d].
    #[arg(long, env = "NOTIGATE_RETENTION", value_name = "DURATION")]
    pub retention: Option<String>,
    /// How long shutdown waits for deliveries in flight [default: 20s].
    #[arg(long, env = "NOTIGATE_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--config` file. Unknown keys are an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    insecure: Option<bool>,
    tokens_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    log_keep_days: Option<usize>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    max_message_size: Option<SizeValue>,
    grpc_max_message_size: Option<SizeValue>,
    max_recipients: Option<usize>,
    max_queued: Option<usize>,
    connection_concurrency: Option<usize>,
    retry_initial: Option<String>,
    retry_multiplier: Option<f64>,
    retry_max_delay: Option<String>,
    retry_jitter: Option<f64>,
    retry_max_age: Option<String>,
    retry_max_attempts: Option<u32>,
    retention: Option<String>,
    shutdown_grace: Option<String>,
}

/// A size in the config file: a number of bytes or a string such as "25MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn into_text(self) -> String {
        match self {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(s) => s,
        }
    }
}

/// Everything `serve` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: KeySource,
    pub insecure: bool,
    pub tokens_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    pub log_dir: PathBuf,
    pub log_keep_days: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub grpc_max_message_size: usize,
    pub send: SendLimits,
    pub dispatch: DispatchConfig,
}

/// The gRPC listener's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set: clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "./notigate-data";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error(
        "refusing to listen on {0}: a non-loopback address needs --tokens-file and --tls-cert/--tls-key \
         (missing: {1}); listen on 127.0.0.1, or pass --insecure if the network is trusted"
    )]
    Exposed(SocketAddr, &'static str),
}

impl Config {
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"));
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let master_key = match (args.master_key_file, std::env::var("NOTIGATE_MASTER_KEY")) {
            (Some(path), _) => KeySource::File(path),
            (None, Ok(value)) if !value.is_empty() => KeySource::Value(value),
            _ => match file.master_key_file {
                Some(path) => KeySource::File(path),
                None => KeySource::Generated,
            },
        };
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        let tokens_file = args.tokens_file.or(file.tokens_file);
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.client_ca.or(file.client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "client_ca",
                    message: "needs --tls-cert and --tls-key".into(),
                });
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(ConfigError::Invalid {
                    setting: "tls_cert",
                    message: "--tls-cert and --tls-key go together".into(),
                });
            }
        };
        if !listen.ip().is_loopback() && !insecure {
            let missing = match (tokens_file.is_some(), tls.is_some()) {
                (true, true) => "",
                (false, true) => "tokens",
                (true, false) => "TLS",
                (false, false) => "tokens and TLS",
            };
            if !missing.is_empty() {
                return Err(ConfigError::Exposed(listen, missing));
            }
        }
        let log_dir = args
            .log_dir
            .or(file.log_dir)
            .unwrap_or_else(|| data_dir.join("logs"));
        let log_keep_days = args.log_keep_days.or(file.log_keep_days).unwrap_or(14);
        let metrics_listen = args.metrics_listen.or(file.metrics_listen);
        let log_format = args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text);
        let defaults = DispatchConfig::default();
        let retry_defaults = RetryPolicy::default();
        let limits = MessageLimits::default();
        let duration = |setting: &'static str,
                        flag: Option<String>,
                        file: Option<String>,
                        default: Duration| {
            match flag.or(file) {
                Some(text) => humantime::parse_duration(&text).map_err(|e| ConfigError::Invalid {
                    setting,
                    message: format!("{text:?} is not a duration such as 30s, 5m or 24h: {e}"),
                }),
                None => Ok(default),
            }
        };
        let size = |setting: &'static str,
                    flag: Option<String>,
                    file: Option<SizeValue>,
                    default: usize| {
            match flag.or(file.map(SizeValue::into_text)) {
                Some(text) => parse_size(&text).ok_or_else(|| ConfigError::Invalid {
                    setting,
                    message: format!("{text:?} is not a size such as 25MiB or 1048576"),
                }),
                None => Ok(default),
            }
        };
        let positive = |setting: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    setting,
                    message: "must be at least 1".into(),
                })
            } else {
                Ok(v)
            }
        };
        let max_message_size = size(
            "max_message_size",
            args.max_message_size,
            file.max_message_size,
            limits.max_message_size,
        )?;
        let grpc_max_message_size = size(
            "grpc_max_message_size",
            args.grpc_max_message_size,
            file.grpc_max_message_size,
            64 * 1024 * 1024,
        )?;
        if grpc_max_message_size <= max_message_size {
            return Err(ConfigError::Invalid {
                setting: "grpc_max_message_size",
                message: format!(
                    "must be larger than max_message_size ({max_message_size}) so that an oversized message gets notigate's precise error"
                ),
            });
        }
        let retry_multiplier = args
            .retry_multiplier
            .or(file.retry_multiplier)
            .unwrap_or(retry_defaults.multiplier);
        if !(1.0..=100.0).contains(&retry_multiplier) {
            return Err(ConfigError::Invalid {
                setting: "retry_multiplier",
                message: "must be from 1 to 100".into(),
            });
        }
        let retry_jitter = args
            .retry_jitter
            .or(file.retry_jitter)
            .unwrap_or(retry_defaults.jitter);
        if !(0.0..=1.0).contains(&retry_jitter) {
            return Err(ConfigError::Invalid {
                setting: "retry_jitter",
                message: "must be a fraction from 0 to 1".into(),
            });
        }
        let retry = RetryPolicy {
            initial: duration(
                "retry_initial",
                args.retry_initial,
                file.retry_initial,
                retry_defaults.initial,
            )?,
            multiplier: retry_multiplier,
            max_delay: duration(
                "retry_max_delay",
                args.retry_max_delay,
                file.retry_max_delay,
                retry_defaults.max_delay,
            )?,
            jitter: retry_jitter,
            max_age: duration(
                "retry_max_age",
                args.retry_max_age,
                file.retry_max_age,
                retry_defaults.max_age,
            )?,
            max_attempts: args
                .retry_max_attempts
                .or(file.retry_max_attempts)
                .unwrap_or(retry_defaults.max_attempts),
        };
        let dispatch = DispatchConfig {
            retry,
            connection_concurrency: positive(
                "connection_concurrency",
                args.connection_concurrency
                    .or(file.connection_concurrency)
                    .unwrap_or(defaults.connection_concurrency),
            )?,
            retention: duration(
                "retention",
                args.retention,
                file.retention,
                defaults.retention,
            )?,
            attempt_timeout: defaults.attempt_timeout,
            shutdown_grace: duration(
                "shutdown_grace",
                args.shutdown_grace,
                file.shutdown_grace,
                defaults.shutdown_grace,
            )?,
        };
        let send = SendLimits {
            message: MessageLimits {
                max_message_size,
                max_recipients: positive(
                    "max_recipients",
                    args.max_recipients
                        .or(file.max_recipients)
                        .unwrap_or(limits.max_recipients),
                )?,
            },
            max_queued: positive(
                "max_queued",
                args.max_queued
                    .or(file.max_queued)
                    .unwrap_or(SendLimits::default().max_queued),
            )?,
        };
        Ok(Config {
            listen,
            data_dir,
            master_key,
            insecure,
            tokens_file,
            tls,
            log_dir,
            log_keep_days,
            metrics_listen,
            log_format,
            grpc_max_message_size,
            send,
            dispatch,
        })
    }
}

/// Parses a size: bytes, or a number with KB, KiB, MB, MiB, GB or GiB.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().ok()?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}
