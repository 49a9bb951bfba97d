//! `notigate connection {create,get,list,update,delete,test}`: the
//! ConnectionAdmin calls, with one flag per connection field. `update` sends
//! only the flags given and names exactly those in the update mask.

use std::{
    io::{BufRead, IsTerminal},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};

use super::{CliError, Client, ClientArgs, Outcome, json, print_json, table, values};
use crate::pb::{self, connection::Backend, test_connection_request::Target};

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ConnectionCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Create a connection: SMTP (--smtp-host) or Exchange (--exchange-server).
    ///
    /// The password comes from --password-file, --password-stdin or
    /// --password-prompt; never from a flag value (it would show in `ps`).
    /// Without any of them, a connection that authenticates asks for it when
    /// stdin is a terminal.
    Create {
        /// System name: Latin letters, digits, `_`; unique; cannot change.
        name: String,
        #[command(flatten)]
        flags: ConnectionFlags,
    },
    /// Show a connection (the password only as set / not set).
    Get { name: String },
    /// List the connections, one page or --all.
    List {
        /// Connections per page [server default: 50].
        #[arg(long, value_name = "N")]
        page_size: Option<i32>,
        /// Continue from a previous page's next_page_token.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
        /// Follow the page tokens to the end.
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
    },
    /// Change the fields given as flags; every other field, and the stored
    /// password unless a new one is given, stays as it is.
    Update {
        name: String,
        #[command(flatten)]
        flags: ConnectionFlags,
        /// Change only if the connection's etag still is this one (else
        /// ABORTED).
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
    },
    /// Delete a connection.
    Delete {
        name: String,
        /// Delete only if the connection's etag still is this one (else
        /// ABORTED).
        #[arg(long, value_name = "ETAG")]
        etag: Option<String>,
        /// Delete even with notifications not yet delivered; they end FAILED.
        #[arg(long)]
        force: bool,
    },
    /// Test a saved connection: connect, TLS, greeting, authentication,
    /// sender; no mail is sent. Exit code 1 when the test fails.
    Test { name: String },
}

/// The connection's fields, as flags. In `create` the missing ones take
/// their defaults; in `update` only the given ones change.
#[derive(Debug, Default, Args)]
pub struct ConnectionFlags {
    /// Free text.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// What the per-connection file log records [default: errors].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<values::LogLevel>,
    /// Sender e-mail address (required for create). If it differs from the
    /// account's, the server must allow sending as it.
    #[arg(long, value_name = "ADDRESS")]
    pub sender_address: Option<String>,
    /// Sender display name (any Unicode).
    #[arg(long, value_name = "NAME")]
    pub sender_name: Option<String>,
    /// Make this the default connection (`Send` without a connection uses
    /// it); clears the flag on the previous default.
    #[arg(long = "default", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub is_default: Option<bool>,
    /// Disable the connection: Send through it is refused.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disabled: Option<bool>,

    /// SMTP server: DNS name or IP address.
    #[arg(long, value_name = "HOST", help_heading = "SMTP")]
    pub smtp_host: Option<String>,
    /// SMTP port, 1-65535 (587 submission, 465 SMTPS, 25 relay).
    #[arg(long, value_name = "PORT", help_heading = "SMTP")]
    pub smtp_port: Option<u32>,
    /// TLS mode [default: auto].
    #[arg(long, value_enum, value_name = "MODE", help_heading = "SMTP")]
    pub smtp_tls: Option<values::SmtpTls>,
    /// SMTP AUTH mechanism [default: negotiate].
    #[arg(long, value_enum, value_name = "MECHANISM", help_heading = "SMTP")]
    pub smtp_auth: Option<values::SmtpAuth>,
    /// EHLO name [default: this machine's host name].
    #[arg(long, value_name = "NAME", help_heading = "SMTP")]
    pub hello_name: Option<String>,

    /// Exchange Web Services server: host[:port][/path], without http(s)://
    /// (path default /EWS/Exchange.asmx).
    #[arg(long, value_name = "SERVER", help_heading = "Exchange")]
    pub exchange_server: Option<String>,
    /// Exchange version (2019 and Exchange Online: 2016).
    #[arg(long, value_enum, value_name = "VERSION", help_heading = "Exchange")]
    pub exchange_version: Option<values::ExchangeVersion>,
    /// Exchange authentication (ntlm = Windows authentication).
    #[arg(long, value_enum, value_name = "TYPE", help_heading = "Exchange")]
    pub exchange_auth: Option<values::ExchangeAuth>,
    /// Keep a copy in Sent Items (SendAndSaveCopy).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Exchange")]
    pub save_copy: Option<bool>,
    /// Talk plain http:// to the server (lab servers without TLS).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Exchange")]
    pub allow_plain_http: Option<bool>,

    /// Login (user name).
    #[arg(long, value_name = "USER", help_heading = "Both backends")]
    pub username: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Both backends",
        group = "password"
    )]
    pub password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long, help_heading = "Both backends", group = "password")]
    pub password_stdin: bool,
    /// Ask for the password on the terminal.
    #[arg(long, help_heading = "Both backends", group = "password")]
    pub password_prompt: bool,
    /// Authentication domain (NTLM).
    #[arg(long, value_name = "DOMAIN", help_heading = "Both backends")]
    pub domain: Option<String>,
    /// PEM file with extra trusted root certificates (a corporate CA); the
    /// system roots stay trusted.
    #[arg(long, value_name = "PEM", help_heading = "Both backends")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate (explicit opt-out).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Both backends")]
    pub accept_invalid_certs: Option<bool>,
    /// Per-command (SMTP) or per-request (Exchange) timeout, e.g. 30s
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Both backends")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Smtp,
    Exchange,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Smtp => "smtp",
            Kind::Exchange => "exchange",
        }
    }
}

impl ConnectionFlags {
    fn smtp_flags(&self) -> bool {
        self.smtp_host.is_some()
            || self.smtp_port.is_some()
            || self.smtp_tls.is_some()
            || self.smtp_auth.is_some()
            || self.hello_name.is_some()
    }

    fn exchange_flags(&self) -> bool {
        self.exchange_server.is_some()
            || self.exchange_version.is_some()
            || self.exchange_auth.is_some()
            || self.save_copy.is_some()
            || self.allow_plain_http.is_some()
    }

    fn shared_backend_flags(&self) -> bool {
        self.username.is_some()
            || self.password_given()
            || self.domain.is_some()
            || self.trusted_ca_file.is_some()
            || self.accept_invalid_certs.is_some()
            || self.timeout.is_some()
    }

    fn password_given(&self) -> bool {
        self.password_file.is_some() || self.password_stdin || self.password_prompt
    }

    /// The backend the backend-specific flags point at, if any.
    fn kind(&self) -> Result<Option<Kind>, CliError> {
        match (self.smtp_flags(), self.exchange_flags()) {
            (true, true) => Err(CliError::input(
                "SMTP flags (--smtp-*, --hello-name) and Exchange flags (--exchange-*, \
                 --save-copy, --allow-plain-http) cannot be mixed",
            )),
            (true, false) => Ok(Some(Kind::Smtp)),
            (false, true) => Ok(Some(Kind::Exchange)),
            (false, false) => Ok(None),
        }
    }

    /// Whether the connection these flags create authenticates, and so
    /// needs a password.
    fn needs_password(&self, kind: Kind) -> bool {
        match kind {
            Kind::Smtp => match self.smtp_auth {
                None | Some(values::SmtpAuth::Negotiate) => {
                    self.username.as_deref().is_some_and(|u| !u.is_empty())
                }
                Some(values::SmtpAuth::None) => false,
                Some(_) => true,
            },
            Kind::Exchange => matches!(
                self.exchange_auth,
                Some(values::ExchangeAuth::Basic | values::ExchangeAuth::Ntlm)
            ),
        }
    }

    /// The password from the source the flags name, if any.
    fn read_password(&self, prompt_when_needed: bool) -> Result<Option<String>, CliError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::input(format!(
                    "cannot read --password-file {}: {e}",
                    path.display()
                ))
            })?;
            return first_line(&text, "--password-file").map(Some);
        }
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                CliError::input(format!("cannot read the password from stdin: {e}"))
            })?;
            return first_line(&line, "--password-stdin").map(Some);
        }
        if self.password_prompt || (prompt_when_needed && std::io::stdin().is_terminal()) {
            let who = self.username.as_deref().unwrap_or_default();
            let prompt = if who.is_empty() {
                "Password: ".to_owned()
            } else {
                format!("Password for {who}: ")
            };
            let password = rpassword::prompt_password(prompt)
                .map_err(|e| CliError::input(format!("cannot read the password: {e}")))?;
            return Ok((!password.is_empty()).then_some(password));
        }
        Ok(None)
    }

    /// The connection to send, and the update-mask paths of the fields the
    /// flags set.
    fn to_connection(
        &self,
        name: &str,
        kind: Option<Kind>,
        password: Option<String>,
    ) -> Result<(pb::Connection, Vec<String>), CliError> {
        let mut paths = Vec::new();
        let mut c = pb::Connection {
            name: name.to_owned(),
            ..Default::default()
        };
        let mut set = |path: &str, given: bool| {
            if given {
                paths.push(path.to_owned());
            }
        };
        if let Some(v) = &self.description {
            c.description = v.clone();
        }
        set("description", self.description.is_some());
        if let Some(v) = self.log_level {
            c.log_level = pb::LogLevel::from(v) as i32;
        }
        set("log_level", self.log_level.is_some());
        if self.sender_address.is_some() || self.sender_name.is_some() {
            c.sender = Some(pb::Address {
                address: self.sender_address.clone().unwrap_or_default(),
                display_name: self.sender_name.clone().unwrap_or_default(),
            });
        }
        set("sender.address", self.sender_address.is_some());
        set("sender.display_name", self.sender_name.is_some());
        c.is_default = self.is_default.unwrap_or(false);
        set("is_default", self.is_default.is_some());
        c.disabled = self.disabled.unwrap_or(false);
        set("disabled", self.disabled.is_some());

        let trusted_ca_pem = match &self.trusted_ca_file {
            Some(path) => Some(read_text(path, "--trusted-ca-file")?),
            None => None,
        };
        let timeout = self.timeout.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
        let password_given = password.is_some();
        match kind {
            Some(Kind::Smtp) => {
                let s = pb::SmtpSettings {
                    host: self.smtp_host.clone().unwrap_or_default(),
                    port: self.smtp_port.unwrap_or(0),
                    tls: self.smtp_tls.map_or(0, |v| pb::SmtpTls::from(v) as i32),
                    trusted_ca_pem: trusted_ca_pem.clone().unwrap_or_default(),
                    accept_invalid_certs: self.accept_invalid_certs.unwrap_or(false),
                    auth: self.smtp_auth.map_or(0, |v| pb::SmtpAuth::from(v) as i32),
                    username: self.username.clone().unwrap_or_default(),
                    password: password.unwrap_or_default(),
                    password_set: false,
                    domain: self.domain.clone().unwrap_or_default(),
                    hello_name: self.hello_name.clone().unwrap_or_default(),
                    timeout,
                };
                c.backend = Some(Backend::Smtp(s));
                set("smtp.host", self.smtp_host.is_some());
                set("smtp.port", self.smtp_port.is_some());
                set("smtp.tls", self.smtp_tls.is_some());
                set("smtp.auth", self.smtp_auth.is_some());
                set("smtp.hello_name", self.hello_name.is_some());
            }
            Some(Kind::Exchange) => {
                let e = pb::ExchangeSettings {
                    server: self.exchange_server.clone().unwrap_or_default(),
                    version: self
                        .exchange_version
                        .map_or(0, |v| pb::ExchangeVersion::from(v) as i32),
                    auth: self
                        .exchange_auth
                        .map_or(0, |v| pb::ExchangeAuth::from(v) as i32),
                    username: self.username.clone().unwrap_or_default(),
                    password: password.unwrap_or_default(),
                    password_set: false,
                    domain: self.domain.clone().unwrap_or_default(),
                    save_copy: self.save_copy.unwrap_or(false),
                    allow_plain_http: self.allow_plain_http.unwrap_or(false),
                    trusted_ca_pem: trusted_ca_pem.clone().unwrap_or_default(),
                    accept_invalid_certs: self.accept_invalid_certs.unwrap_or(false),
                    timeout,
                };
                c.backend = Some(Backend::Exchange(e));
                set("exchange.server", self.exchange_server.is_some());
                set("exchange.version", self.exchange_version.is_some());
                set("exchange.auth", self.exchange_auth.is_some());
                set("exchange.save_copy", self.save_copy.is_some());
                set("exchange.allow_plain_http", self.allow_plain_http.is_some());
            }
            None => {}
        }
        if let Some(kind) = kind {
            let k = kind.as_str();
            set(&format!("{k}.username"), self.username.is_some());
            set(&format!("{k}.password"), password_given);
            set(&format!("{k}.domain"), self.domain.is_some());
            set(&format!("{k}.trusted_ca_pem"), trusted_ca_pem.is_some());
            set(
                &format!("{k}.accept_invalid_certs"),
                self.accept_invalid_certs.is_some(),
            );
            set(&format!("{k}.timeout"), self.timeout.is_some());
        }
        Ok((c, paths))
    }
}

/// The first line of a password source, without its line end; empty is an
/// error (an empty file is a mistake, not "no password").
fn first_line(text: &str, source: &str) -> Result<String, CliError> {
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(CliError::input(format!("{source}: the password is empty")));
    }
    Ok(line.to_owned())
}

fn read_text(path: &Path, flag: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("cannot read {flag} {}: {e}", path.display())))
}

pub async fn run(args: ConnectionArgs) -> Result<Outcome, CliError> {
    let json = args.client.json;
    // Check what can be checked before dialling, and read passwords before
    // the server could time out waiting.
    let prepared = match &args.command {
        ConnectionCommand::Create { name, flags } => Some(prepare_create(name, flags)?),
        _ => None,
    };
    let client = Client::connect(&args.client).await?;
    let mut admin = client.admin();
    match args.command {
        ConnectionCommand::Create { .. } => {
            let connection = prepared.map(|(c, _)| c);
            let created = admin
                .create_connection(client.request(pb::CreateConnectionRequest { connection }))
                .await?
                .into_inner();
            print_connection(&created, json);
        }
        ConnectionCommand::Get { name } => {
            let c = admin
                .get_connection(client.request(pb::GetConnectionRequest { name }))
                .await?
                .into_inner();
            print_connection(&c, json);
        }
        ConnectionCommand::List {
            page_size,
            page_token,
            all,
        } => {
            let mut connections = Vec::new();
            let mut token = page_token.unwrap_or_default();
            loop {
                let page = admin
                    .list_connections(client.request(pb::ListConnectionsRequest {
                        page_size: page_size.unwrap_or(0),
                        page_token: token,
                    }))
                    .await?
                    .into_inner();
                connections.extend(page.connections);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            if json {
                print_json(&json::list_connections(&connections, &token));
            } else {
                print!("{}", list_table(&connections));
                if !token.is_empty() {
                    println!("(more: --page-token {token}, or --all)");
                }
            }
        }
        ConnectionCommand::Update { name, flags, etag } => {
            let kind = match flags.kind()? {
                Some(kind) => Some(kind),
                // Flags that both backends have go to the one the connection uses.
                None if flags.shared_backend_flags() => {
                    let current = admin
                        .get_connection(
                            client.request(pb::GetConnectionRequest { name: name.clone() }),
                        )
                        .await?
                        .into_inner();
                    match current.backend {
                        Some(Backend::Exchange(_)) => Some(Kind::Exchange),
                        _ => Some(Kind::Smtp),
                    }
                }
                None => None,
            };
            let password = flags.read_password(false)?;
            let (mut connection, paths) = flags.to_connection(&name, kind, password)?;
            if paths.is_empty() {
                return Err(CliError::input(
                    "nothing to update: give the flags of the fields to change (see --help)",
                ));
            }
            connection.etag = etag.unwrap_or_default();
            let updated = admin
                .update_connection(client.request(pb::UpdateConnectionRequest {
                    connection: Some(connection),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await?
                .into_inner();
            print_connection(&updated, json);
        }
        ConnectionCommand::Delete { name, etag, force } => {
            admin
                .delete_connection(client.request(pb::DeleteConnectionRequest {
                    name: name.clone(),
                    etag: etag.unwrap_or_default(),
                    force,
                }))
                .await?;
            if json {
                print_json(&json::empty());
            } else {
                println!("deleted {name}");
            }
        }
        ConnectionCommand::Test { name } => {
            let r = admin
                .test_connection(client.request(pb::TestConnectionRequest {
                    target: Some(Target::Name(name)),
                }))
                .await?
                .into_inner();
            if json {
                print_json(&json::test_connection(&r));
            } else {
                let mut kv = table::KeyValues::default();
                kv.add("ok", table::yes_no(r.ok))
                    .add("stage", r.stage.clone())
                    .add("detail", r.detail.clone())
                    .add(
                        "latency",
                        r.latency.as_ref().map(format_latency).unwrap_or_default(),
                    );
                print!("{}", kv.render());
            }
            if !r.ok {
                return Ok(Outcome::NotOk);
            }
        }
    }
    Ok(Outcome::Success)
}

/// Checks the create flags and reads the password.
fn prepare_create(
    name: &str,
    flags: &ConnectionFlags,
) -> Result<(pb::Connection, Vec<String>), CliError> {
    let kind = match (&flags.smtp_host, &flags.exchange_server) {
        (Some(_), Some(_)) => {
            return Err(CliError::input(
                "give either --smtp-host (SMTP) or --exchange-server (Exchange), not both",
            ));
        }
        (None, None) => {
            return Err(CliError::input(
                "give --smtp-host (SMTP) or --exchange-server (Exchange)",
            ));
        }
        (Some(_), None) => Kind::Smtp,
        (None, Some(_)) => Kind::Exchange,
    };
    if flags.kind()? != Some(kind) {
        return Err(CliError::input(
            "SMTP flags (--smtp-*, --hello-name) and Exchange flags (--exchange-*, --save-copy, \
             --allow-plain-http) cannot be mixed",
        ));
    }
    if flags.sender_address.is_none() {
        return Err(CliError::input(
            "--sender-address is required to create a connection",
        ));
    }
    let password = flags.read_password(flags.needs_password(kind))?;
    flags.to_connection(name, Some(kind), password)
}

fn format_latency(d: &prost_types::Duration) -> String {
    let ms = d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn format_duration(d: &prost_types::Duration) -> String {
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(s), Ok(n)) => humantime::format_duration(Duration::new(s, n)).to_string(),
        _ => json::duration(d).as_str().unwrap_or_default().to_owned(),
    }
}

fn password(set: bool) -> &'static str {
    if set { "(set)" } else { "(not set)" }
}

fn trusted_ca(pem: &str) -> String {
    let n = pem.matches("-----BEGIN CERTIFICATE-----").count();
    match n {
        0 if pem.is_empty() => String::new(),
        1 => "1 certificate".into(),
        n => format!("{n} certificates"),
    }
}

fn print_connection(c: &pb::Connection, json: bool) {
    if json {
        print_json(&json::connection(c));
    } else {
        print!("{}", describe(c));
    }
}

/// `key: value` lines, keyed by the field paths that `update` and error
/// messages use.
fn describe(c: &pb::Connection) -> String {
    let mut kv = table::KeyValues::default();
    kv.add("name", c.name.clone())
        .add("description", c.description.clone())
        .add("disabled", table::yes_no(c.disabled))
        .add("is_default", table::yes_no(c.is_default))
        .add("log_level", values::log_level(c.log_level));
    if let Some(s) = &c.sender {
        kv.add("sender.address", s.address.clone())
            .add("sender.display_name", s.display_name.clone());
    }
    match &c.backend {
        Some(Backend::Smtp(s)) => {
            kv.add("smtp.host", s.host.clone())
                .add("smtp.port", s.port.to_string())
                .add("smtp.tls", values::smtp_tls(s.tls))
                .add("smtp.auth", values::smtp_auth(s.auth))
                .add("smtp.username", s.username.clone())
                .add("smtp.password", password(s.password_set))
                .add("smtp.domain", s.domain.clone())
                .add("smtp.hello_name", s.hello_name.clone())
                .add("smtp.trusted_ca_pem", trusted_ca(&s.trusted_ca_pem))
                .add(
                    "smtp.accept_invalid_certs",
                    if s.accept_invalid_certs { "yes" } else { "" },
                )
                .add(
                    "smtp.timeout",
                    s.timeout.as_ref().map(format_duration).unwrap_or_default(),
                );
        }
        Some(Backend::Exchange(e)) => {
            kv.add("exchange.server", e.server.clone())
                .add("exchange.version", values::exchange_version(e.version))
                .add("exchange.auth", values::exchange_auth(e.auth))
                .add("exchange.username", e.username.clone())
                .add("exchange.password", password(e.password_set))
                .add("exchange.domain", e.domain.clone())
                .add("exchange.save_copy", table::yes_no(e.save_copy))
                .add(
                    "exchange.allow_plain_http",
                    if e.allow_plain_http { "yes" } else { "" },
                )
                .add("exchange.trusted_ca_pem", trusted_ca(&e.trusted_ca_pem))
                .add(
                    "exchange.accept_invalid_certs",
                    if e.accept_invalid_certs { "yes" } else { "" },
                )
                .add(
                    "exchange.timeout",
                    e.timeout.as_ref().map(format_duration).unwrap_or_default(),
                );
        }
        None => {}
    }
    kv.add("etag", c.etag.clone())
        .add(
            "create_time",
            c.create_time
                .as_ref()
                .map(json::format_timestamp)
                .unwrap_or_default(),
        )
        .add(
            "update_time",
            c.update_time
                .as_ref()
                .map(json::format_timestamp)
                .unwrap_or_default(),
        );
    kv.render()
}

fn list_table(connections: &[pb::Connection]) -> String {
    let rows: Vec<Vec<String>> = connections
        .iter()
        .map(|c| {
            let (backend, target) = match &c.backend {
                Some(Backend::Smtp(s)) => ("smtp", format!("{}:{}", s.host, s.port)),
                Some(Backend::Exchange(e)) => ("exchange", e.server.clone()),
                None => ("", String::new()),
            };
            vec![
                c.name.clone(),
                backend.to_owned(),
                target,
                c.sender
                    .as_ref()
                    .map(|s| s.address.clone())
                    .unwrap_or_default(),
                if c.is_default { "yes" } else { "" }.to_owned(),
                if c.disabled { "yes" } else { "" }.to_owned(),
            ]
        })
        .collect();
    table::table(
        &["NAME", "BACKEND", "SERVER", "SENDER", "DEFAULT", "DISABLED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_names_exactly_the_given_flags_in_the_mask() {
        let flags = ConnectionFlags {
            description: Some("night shift".into()),
            smtp_port: Some(2526),
            accept_invalid_certs: Some(false),
            ..Default::default()
        };
        let kind = flags.kind().unwrap();
        let (c, paths) = flags.to_connection("a", kind, None).unwrap();
        assert_eq!(
            paths,
            ["description", "smtp.port", "smtp.accept_invalid_certs"]
        );
        assert_eq!(c.description, "night shift");
        match c.backend {
            Some(Backend::Smtp(s)) => assert_eq!(s.port, 2526),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_password_is_needed_only_when_the_connection_authenticates() {
        let mut f = ConnectionFlags::default();
        assert!(!f.needs_password(Kind::Smtp));
        f.username = Some("u".into());
        assert!(f.needs_password(Kind::Smtp));
        f.smtp_auth = Some(values::SmtpAuth::None);
        assert!(!f.needs_password(Kind::Smtp));
        f.exchange_auth = Some(values::ExchangeAuth::Ntlm);
        assert!(f.needs_password(Kind::Exchange));
    }

    #[test]
    fn mixing_backends_is_refused() {
        let f = ConnectionFlags {
            smtp_host: Some("h".into()),
            save_copy: Some(true),
            ..Default::default()
        };
        assert!(f.kind().is_err());
    }
}
