//! `notigate token create`: adds a bearer token to a tokens file (its hash
//! only) and prints the token, the one time it is ever shown.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Outcome};
use crate::auth::{Role, create_token};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token: its SHA-256 hash is appended to the tokens file (a
    /// running server picks it up within a second); the token itself is
    /// printed once and stored nowhere.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// admin (ConnectionAdmin) or sender (Notifier); repeat or comma-separate
    /// for both.
    #[arg(long = "role", value_name = "ROLE", required = true, value_delimiter = ',', value_parser = Role::parse)]
    pub roles: Vec<Role>,
    /// A label kept beside the hash (who or what uses the token).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub name: String,
    /// The server's tokens file (created with mode 0600 when missing).
    #[arg(long, env = "NOTIGATE_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: PathBuf,
}

pub fn run(args: TokenArgs) -> Result<Outcome, CliError> {
    match args.command {
        TokenCommand::Create(args) => {
            let mut unique: Vec<Role> = Vec::new();
            for r in args.roles {
                if !unique.contains(&r) {
                    unique.push(r);
                }
            }
            let token = create_token(&args.tokens_file, &unique, args.name.trim())
                .map_err(|e| CliError::input(e.to_string()))?;
            // The token alone on stdout, so that `TOKEN=$(notigate token create …)` works.
            println!("{token}");
            let roles: Vec<&str> = unique.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "notigate: this token is shown only once; keep it now. Its hash was added to {} \
                 with the role(s) {}.",
                args.tokens_file.display(),
                roles.join(",")
            );
            Ok(Outcome::Success)
        }
    }
}
