//! Command line, environment and TOML file → [`Config`]. Precedence: flag >
//! environment (`NOTIGATE_*`) > file (`--config`) > default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::store::KeySource;

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
}

/// The `--config` file. Unknown keys are an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    insecure: Option<bool>,
}

/// Everything `serve` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: KeySource,
    pub insecure: bool,
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
    #[error(
        "refusing to listen on {0}: a non-loopback address would expose the gateway without \
         authentication or TLS; listen on 127.0.0.1, or pass --insecure if the network is trusted"
    )]
    Exposed(SocketAddr),
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
        if !listen.ip().is_loopback() && !insecure {
            return Err(ConfigError::Exposed(listen));
        }
        Ok(Config {
            listen,
            data_dir,
            master_key,
            insecure,
        })
    }
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
