//! SSH brute force from the authentication log (OpenSSH's lines in
//! `/var/log/auth.log`, or any file with them): per source, failed logins
//! within a window (`ssh_bruteforce`, warning), and a successful login from
//! a source that just failed several times (`ssh_success_after_failures`,
//! critical: the guess may have worked).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use tierwatch_protocol::{Event, Severity};

/// What one log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Failed { user: String, src: IpAddr },
    Accepted { user: String, src: IpAddr },
}

/// Reads OpenSSH's `Failed <method> for [invalid user] U from A port P` and
/// `Accepted <method> for U from A port P`; anything else is `None`.
pub fn parse(line: &str) -> Option<Login> {
    let (accepted, rest) = if let Some(i) = line.find("sshd").and_then(|s| line[s..].find("Failed ").map(|j| s + j)) {
        (false, &line[i + 7..])
    } else if let Some(i) = line.find("sshd").and_then(|s| line[s..].find("Accepted ").map(|j| s + j)) {
        (true, &line[i + 9..])
    } else {
        return None;
    };
    let after_for = &rest[rest.find(" for ")? + 5..];
    let after_for = after_for.strip_prefix("invalid user ").unwrap_or(after_for);
    let (user, after_user) = after_for.split_once(" from ")?;
    let src: IpAddr = after_user.split_whitespace().next()?.parse().ok()?;
    let user = user.to_string();
    Some(if accepted { Login::Accepted { user, src } } else { Login::Failed { user, src } })
}

/// When failures are an attack.
#[derive(Debug, Clone, PartialEq)]
pub struct SshPolicy {
    pub failures: usize,
    pub window: Duration,
    /// Sources never reported (a jump host), as (network, prefix) of IPv4.
    pub allow: Vec<(std::net::Ipv4Addr, u8)>,
    pub max_sources: usize,
}

impl Default for SshPolicy {
    fn default() -> Self {
        SshPolicy { failures: 10, window: Duration::from_secs(300), allow: Vec::new(), max_sources: 10_000 }
    }
}

#[derive(Debug, Default)]
struct Source {
    failures: VecDeque<(i64, String)>,
    reported_ms: Option<i64>,
}

/// Failures per source.
#[derive(Debug, Default)]
pub struct SshWatch {
    policy: SshPolicy,
    sources: HashMap<IpAddr, Source>,
}

impl SshWatch {
    /// A watch with `policy`.
    pub fn new(policy: SshPolicy) -> Self {
        SshWatch { policy, sources: HashMap::new() }
    }

    /// One log line read at `now_ms`.
    pub fn observe(&mut self, line: &str, now_ms: i64) -> Option<Event> {
        let login = parse(line)?;
        let src = match &login {
            Login::Failed { src, .. } | Login::Accepted { src, .. } => *src,
        };
        if let IpAddr::V4(v4) = src {
            if self.policy.allow.iter().any(|n| super::scan::in_net(v4, *n)) {
                return None;
            }
        }
        let window = self.policy.window.as_millis() as i64;
        if !self.sources.contains_key(&src) && self.sources.len() >= self.policy.max_sources {
            self.sources.retain(|_, s| s.failures.back().is_some_and(|(t, _)| now_ms - t <= window));
            if self.sources.len() >= self.policy.max_sources {
                return None;
            }
        }
        let s = self.sources.entry(src).or_default();
        while s.failures.front().is_some_and(|(t, _)| now_ms - t > window) {
            s.failures.pop_front();
        }
        match login {
            Login::Failed { user, .. } => {
                if s.failures.len() < self.policy.failures * 4 {
                    s.failures.push_back((now_ms, user));
                }
                if s.failures.len() < self.policy.failures || s.reported_ms.is_some_and(|r| now_ms - r < window) {
                    return None;
                }
                s.reported_ms = Some(now_ms);
                Some(event(
                    "ssh_bruteforce",
                    Severity::Warning,
                    src,
                    now_ms,
                    &[
                        ("failures", s.failures.len().to_string()),
                        ("users", users(s)),
                        ("window_s", (window / 1000).to_string()),
                    ],
                ))
            }
            Login::Accepted { user, .. } => {
                let failed = s.failures.len();
                // A few typos are normal; half the brute-force threshold is not.
                if failed < (self.policy.failures / 2).max(3) {
                    return None;
                }
                let e = event(
                    "ssh_success_after_failures",
                    Severity::Critical,
                    src,
                    now_ms,
                    &[
                        ("user", user),
                        ("failures_before", failed.to_string()),
                        ("failed_users", users(s)),
                        ("window_s", (window / 1000).to_string()),
                    ],
                );
                s.failures.clear();
                Some(e)
            }
        }
    }
}

/// The distinct user names tried, at most ten, joined.
fn users(s: &Source) -> String {
    let names: BTreeSet<&str> = s.failures.iter().map(|(_, u)| u.as_str()).collect();
    names.into_iter().take(10).collect::<Vec<_>>().join(",")
}

fn event(kind: &str, severity: Severity, src: IpAddr, now_ms: i64, attrs: &[(&str, String)]) -> Event {
    let src = ("src", src.to_string());
    Event::new(kind, severity, now_ms, attrs.iter().cloned().chain([src]))
}

/// Where authentication lines come from.
#[derive(Debug)]
pub enum Lines {
    /// A log file, followed like `tail -F`.
    File(Tail),
    /// sshd's messages in the systemd journal (`journalctl --follow`), for
    /// systems without a syslog daemon (Debian 12's default).
    Journal(Journal),
}

impl Lines {
    /// `journal` for the journal, else the file at `path`.
    pub fn new(path: PathBuf) -> Lines {
        if path.as_os_str() == "journal" {
            Lines::Journal(Journal::default())
        } else {
            Lines::File(Tail::new(path))
        }
    }

    /// The complete lines that arrived since the last call.
    pub fn lines(&mut self) -> Vec<String> {
        match self {
            Lines::File(t) => t.lines(),
            Lines::Journal(j) => j.lines(),
        }
    }
}

/// `journalctl --follow` of sshd's messages, read by a thread of its own;
/// started again (at most every 30 s) if it ends.
#[derive(Debug, Default)]
pub struct Journal {
    rx: Option<std::sync::mpsc::Receiver<String>>,
    started: Option<std::time::Instant>,
}

impl Journal {
    fn lines(&mut self) -> Vec<String> {
        let alive = self.rx.is_some();
        if !alive && self.started.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            self.started = Some(std::time::Instant::now());
            self.rx = Self::spawn();
        }
        let Some(rx) = &self.rx else { return Vec::new() };
        let mut out = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(l) => out.push(l),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.rx = None;
                    break;
                }
            }
        }
        out
    }

    fn spawn() -> Option<std::sync::mpsc::Receiver<String>> {
        use std::io::BufRead;
        let child = std::process::Command::new("journalctl")
            .args(["--follow", "--lines=0", "--output=short", "--no-pager", "_COMM=sshd"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "SSH sensor: journalctl cannot run; retrying in 30 s");
                return None;
            }
        };
        let stdout = child.stdout.take()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(10_000);
        let spawned = std::thread::Builder::new().name("journal".into()).spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        spawned.ok().map(|_| rx)
    }
}

/// Follows a log file as `tail -F` does: from its end at the first open,
/// from the start of a new file after rotation (another inode, or shorter).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<(File, u64)>,
    offset: u64,
    partial: String,
}

impl Tail {
    /// Follows `path` (which may not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Tail { path, file: None, offset: 0, partial: String::new() }
    }

    /// The complete lines written since the last call.
    pub fn lines(&mut self) -> Vec<String> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            self.file = None;
            return Vec::new();
        };
        let rotated = match &self.file {
            Some((_, ino)) => *ino != meta.ino() || meta.len() < self.offset,
            None => true,
        };
        if rotated {
            let first = self.file.is_none() && self.offset == 0 && self.partial.is_empty();
            let Ok(f) = File::open(&self.path) else { return Vec::new() };
            // At the first open, history is not news; after rotation, the new file is.
            self.offset = if first { meta.len() } else { 0 };
            self.partial.clear();
            self.file = Some((f, meta.ino()));
        }
        let Some((f, _)) = self.file.as_mut() else { return Vec::new() };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.take(4 << 20).read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = out.pop().unwrap_or_default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FAIL: &str =
        "Nov 28 09:30:01 c1 sshd[812]: Failed password for invalid user admin from 10.2.1.10 port 50412 ssh2";

    #[test]
    fn openssh_lines() {
        assert_eq!(parse(FAIL), Some(Login::Failed { user: "admin".into(), src: "10.2.1.10".parse().unwrap() }));
        assert_eq!(
            parse("Nov 28 09:30:09 c1 sshd[815]: Accepted publickey for lan from 2001:db8::5 port 50999 ssh2: ED25519 SHA256:x"),
            Some(Login::Accepted { user: "lan".into(), src: "2001:db8::5".parse().unwrap() })
        );
        assert_eq!(parse("Nov 28 09:30:01 c1 CRON[1]: Failed to start"), None);
        assert_eq!(parse("Nov 28 09:30:01 c1 sshd[1]: Failed password for root from nowhere port 1"), None);
    }

    #[test]
    fn a_burst_then_a_success_from_the_same_source() {
        let mut w = SshWatch::new(SshPolicy::default());
        let events: Vec<Event> = (0..30).filter_map(|i| w.observe(FAIL, i * 1000)).collect();
        assert_eq!(events.len(), 1, "once per window");
        assert_eq!(events[0].attributes["src"], "10.2.1.10");
        assert_eq!(events[0].attributes["failures"], "10");
        let ok = "Nov 28 09:31:00 c1 sshd[900]: Accepted password for admin from 10.2.1.10 port 50500 ssh2";
        let e = w.observe(ok, 31_000).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("ssh_success_after_failures", Severity::Critical as i32));
        // Two typos, then success: nothing.
        let typo = "Nov 28 09:32:00 c1 sshd[901]: Failed password for lan from 10.2.1.20 port 1 ssh2";
        w.observe(typo, 0);
        w.observe(typo, 1);
        assert!(w.observe(&ok.replace("10.2.1.10", "10.2.1.20"), 2).is_none());
    }

    #[test]
    fn tail_follows_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut t = Tail::new(path.clone());
        assert!(t.lines().is_empty(), "history is not news");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "one\ntw").unwrap();
        assert_eq!(t.lines(), ["one"]);
        f.write_all(b"o\n").unwrap();
        assert_eq!(t.lines(), ["two"]);
        // Rotated: a new file under the same name is read from its start.
        std::fs::rename(&path, dir.path().join("auth.log.1")).unwrap();
        std::fs::write(&path, "three\n").unwrap();
        assert_eq!(t.lines(), ["three"]);
    }
}
