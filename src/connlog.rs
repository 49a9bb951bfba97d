//! Per-connection file logs — the seed's "write to file logs: full details
//! of message processing / errors only / off". One file per connection,
//! `<log-dir>/<name>.log`, rotated daily to `<name>.<YYYY-MM-DD>.log` and
//! bounded to the newest `keep_days` rotated files. The connection's
//! `log_level` is read at every event, so a change applies at once.
//!
//! Lines carry ids, recipients, subjects, server replies and errors; never a
//! password, token, body or attachment content.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use crate::domain::{LogLevel, Mailbox, OutgoingMessage};

/// Whether an event is a failure (written at `LOG_LEVEL_ERRORS` too) or a
/// step (written only at `LOG_LEVEL_FULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Step,
    Error,
}

pub struct ConnectionLogs {
    dir: PathBuf,
    keep_days: usize,
    open: Mutex<HashMap<String, OpenLog>>,
}

struct OpenLog {
    day: String,
    file: File,
}

fn day_of(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

impl ConnectionLogs {
    pub fn new(dir: &Path, keep_days: usize) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            keep_days,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Writes one event for `connection` if its level asks for it. `text`
    /// is only built when the line is written.
    pub fn event(
        &self,
        connection: &str,
        level: LogLevel,
        kind: Kind,
        text: impl FnOnce() -> String,
    ) {
        let wanted = match level {
            LogLevel::Off => false,
            LogLevel::Errors => kind == Kind::Error,
            LogLevel::Full => true,
        };
        if !wanted {
            return;
        }
        let now = SystemTime::now();
        let line = format!(
            "{} {} {}\n",
            humantime::format_rfc3339_millis(now),
            match kind {
                Kind::Step => "INFO ",
                Kind::Error => "ERROR",
            },
            text().replace(['\r', '\n'], " ")
        );
        if let Err(e) = self.write(connection, &day_of(now), line.as_bytes()) {
            tracing::warn!(connection, error = %e, "cannot write the connection's file log");
        }
    }

    fn write(&self, connection: &str, today: &str, line: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let stale = open.get(connection).is_none_or(|o| o.day != today);
        if stale {
            open.remove(connection);
            let file = self.open_for_today(connection, today)?;
            open.insert(
                connection.to_owned(),
                OpenLog {
                    day: today.to_owned(),
                    file,
                },
            );
        }
        match open.get_mut(connection) {
            Some(o) => o.file.write_all(line),
            None => Ok(()),
        }
    }

    /// Opens `<name>.log`, first rotating it away when it was written on an
    /// earlier day, and prunes old rotated files.
    fn open_for_today(&self, connection: &str, today: &str) -> std::io::Result<File> {
        let current = self.dir.join(format!("{connection}.log"));
        if let Ok(meta) = fs::metadata(&current) {
            let written = meta
                .modified()
                .map(day_of)
                .unwrap_or_else(|_| today.to_owned());
            if written != today {
                let rotated = self.dir.join(format!("{connection}.{written}.log"));
                fs::rename(&current, rotated)?;
                self.prune(connection)?;
            }
        }
        OpenOptions::new().create(true).append(true).open(&current)
    }

    fn prune(&self, connection: &str) -> std::io::Result<()> {
        let prefix = format!("{connection}.");
        let mut rotated: Vec<String> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".log"))
                    .is_some_and(|day| day.len() == 10 && day.as_bytes()[4] == b'-')
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep_days);
        for name in &rotated[..excess] {
            fs::remove_file(self.dir.join(name))?;
        }
        Ok(())
    }
}

fn list(mailboxes: &[Mailbox]) -> String {
    mailboxes
        .iter()
        .map(|m| m.address.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `to=… cc=… bcc=… subject="…"`: who and what, never the body.
pub fn describe(m: &OutgoingMessage) -> String {
    let mut out = format!("to={}", list(&m.to));
    if !m.cc.is_empty() {
        out.push_str(&format!(" cc={}", list(&m.cc)));
    }
    if !m.bcc.is_empty() {
        out.push_str(&format!(" bcc={}", list(&m.bcc)));
    }
    out.push_str(&format!(" subject={:?}", m.subject));
    if !m.attachments.is_empty() {
        out.push_str(&format!(" attachments={}", m.attachments.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_decide_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let logs = ConnectionLogs::new(dir.path(), 3).unwrap();
        logs.event("full", LogLevel::Full, Kind::Step, || "step".into());
        logs.event("full", LogLevel::Full, Kind::Error, || "error".into());
        logs.event("errors", LogLevel::Errors, Kind::Step, || "step".into());
        logs.event("errors", LogLevel::Errors, Kind::Error, || "error".into());
        logs.event("off", LogLevel::Off, Kind::Error, || "error".into());
        let read =
            |n: &str| fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default();
        assert_eq!(read("full").lines().count(), 2);
        assert_eq!(read("errors").lines().count(), 1);
        assert!(read("errors").contains("ERROR error"));
        assert!(!dir.path().join("off.log").exists());
    }

    #[test]
    fn a_file_from_an_earlier_day_is_rotated_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for day in ["2026-01-01", "2026-01-02", "2026-01-03"] {
            fs::write(dir.path().join(format!("c.{day}.log")), "old\n").unwrap();
        }
        let current = dir.path().join("c.log");
        fs::write(&current, "yesterday\n").unwrap();
        let yesterday = SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        File::options()
            .write(true)
            .open(&current)
            .unwrap()
            .set_modified(yesterday)
            .unwrap();
        let logs = ConnectionLogs::new(dir.path(), 2).unwrap();
        logs.event("c", LogLevel::Full, Kind::Step, || "today".into());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names.contains(&format!("c.{}.log", day_of(yesterday))),
            "{names:?}"
        );
        assert!(fs::read_to_string(&current).unwrap().contains("today"));
        assert!(!fs::read_to_string(&current).unwrap().contains("yesterday"));
    }
}
