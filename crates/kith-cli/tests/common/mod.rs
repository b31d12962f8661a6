//! What the `kith` binary's tests share: running it as a user would (a one-shot command, or a
//! long-running node read until its ready event), with a throwaway passphrase and the cheap KDF.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PASS: &str = "correct horse battery staple";

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// A success whose output does not matter.
    pub fn ok(&self) {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
    }

    /// A failure: non-zero exit and exactly one line on stderr.
    pub fn error(&self) -> &str {
        assert_ne!(self.code, 0, "expected failure, stdout: {}", self.stdout);
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one error line: {:?}",
            self.stderr
        );
        assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        self.stderr.trim_end()
    }
}

pub fn kith_cmd(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kith"));
    cmd.arg("--home")
        .arg(home)
        .env("KITH_PASSPHRASE", PASS)
        .env("KITH_INSECURE_FAST_KDF", "1")
        .env_remove("KITH_PASSPHRASE_FILE")
        .env_remove("KITH_ENDPOINT")
        .env_remove("KITH_TOKEN_FILE")
        .env_remove("KITH_BIP39_PASSPHRASE")
        .env_remove("KITH_STORE_URL")
        .env_remove("KITH_STORE_PASSWORD_FILE");
    cmd
}

pub fn run_with(mut cmd: Command, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

pub fn kith(home: &Path, args: &[&str]) -> Run {
    run_with(kith_cmd(home), args, b"")
}

pub fn kith_in(home: &Path, args: &[&str], stdin: &[u8]) -> Run {
    run_with(kith_cmd(home), args, stdin)
}

pub struct Node {
    pub child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(home: &Path, args: &[&str]) -> (Node, Value) {
    let mut child = kith_cmd(home)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The ready event is one pretty-printed JSON document; read until it parses.
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "node did not become ready"
        );
        use std::io::Read;
        let n = stdout.read(&mut byte).unwrap();
        assert!(n > 0, "node exited: {:?}", child.wait_with_output());
        buf.push(byte[0]);
        if byte[0] == b'}'
            && let Ok(v) = serde_json::from_slice::<Value>(&buf)
        {
            break v;
        }
    };
    (Node { child }, ready)
}

pub fn sigterm(node: &mut Node) -> i32 {
    Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status()
        .unwrap();
    node.child.wait().unwrap().code().unwrap_or(-1)
}

/// `kith node up` on loopback (no mDNS), joining the DHT through `bootstrap` if given.
pub fn node_up(home: &Path, bootstrap: Option<&str>) -> (Node, Value) {
    let mut args = vec!["--json", "node", "up", "--bind", "127.0.0.1:0", "--no-mdns"];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    start(home, &args)
}

/// Retries `f` until it returns `Some`, for up to 30 s.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(Duration::from_secs(30), what, f)
}

/// Retries `f` until it returns `Some`, for up to `limit`.
pub fn eventually_within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Contacts in the node's DHT routing table.
pub fn dht_contacts(home: &Path) -> u64 {
    kith(home, &["--json", "dht", "status"]).json()["routing_table_size"]
        .as_u64()
        .unwrap_or(0)
}
