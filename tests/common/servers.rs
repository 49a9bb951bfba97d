//! The Python test servers (tests/servers/): started as child processes on a
//! free loopback port, killed on drop, with their spool of what they received.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A running `smtp_server.py` or `ews_server.py`.
pub struct PyServer {
    pub port: u16,
    child: Child,
    spool: TempDir,
}

impl PyServer {
    /// Starts `tests/servers/<script>` with `args` (plus `--port 0 --spool DIR`)
    /// and waits for its `READY <port>` line.
    pub fn start(script: &str, args: &[&str]) -> PyServer {
        let spool = tempfile::tempdir().expect("spool dir");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/servers")
            .join(script);
        let mut child = Command::new("python3")
            .arg(&path)
            .args(["--host", "127.0.0.1", "--port", "0", "--spool"])
            .arg(spool.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the READY line");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} did not say READY: {line:?}"));
        PyServer { port, child, spool }
    }

    /// The SMTP test server with extra flags.
    pub fn smtp(args: &[&str]) -> PyServer {
        PyServer::start("smtp_server.py", args)
    }

    pub fn spool_dir(&self) -> &Path {
        self.spool.path()
    }

    /// The received records (`<n>.json`), in order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.spool.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let p = e.path();
                        let n = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
                        (p.extension()? == "json").then_some((n, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
            .collect()
    }

    /// Waits until at least `n` messages were received (a hang guard, not a
    /// timing assertion).
    pub fn wait_received(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a raw RFC 5322 message with Python's `email` package (policy
/// default: RFC 2047 decoded) and returns what a mail client would show:
/// headers, the MIME tree and decoded text parts.
pub fn parse_mime(raw: &[u8]) -> serde_json::Value {
    let script = r#"
import sys, json, email
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
def walk(p):
    d = {"content_type": p.get_content_type(), "filename": p.get_filename(),
         "content_id": p.get("Content-ID"), "disposition": p.get_content_disposition()}
    if p.is_multipart():
        d["parts"] = [walk(x) for x in p.iter_parts()]
    elif p.get_content_maintype() == "text":
        d["text"] = p.get_content()
    else:
        d["size"] = len(p.get_payload(decode=True) or b"")
    return d
out = {"headers": {k: str(v) for k, v in m.items()}, "tree": walk(m),
       "header_names": [k for k, _ in m.items()]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(raw)
            .expect("writing the message");
    }
    let out = child.wait_with_output().expect("python output");
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}
