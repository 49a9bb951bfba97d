//! The `notigate` binary: parses the command line and hands over to the
//! library: `serve` runs the gateway, the other commands are its client.

use std::process::ExitCode;

use clap::Parser;
use notigate::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Connection(args) => return notigate::cli::connection(args),
        Command::Send(args) => return notigate::cli::send(args),
        Command::Status(args) => return notigate::cli::status(args),
        Command::Token(args) => return notigate::cli::token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notigate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs on stderr, filtered by RUST_LOG (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn run_serve(args: notigate::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        notigate::serve(config, shutdown).await
    })
}

/// Installs the SIGINT and SIGTERM handlers now — before the server says it
/// is listening, so a signal right after that line drains instead of killing
/// the process — and returns a future that completes on either.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
