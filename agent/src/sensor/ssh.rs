//! SSH brute force from the authentication log (OpenSSH's lines in
//! `/var/log/auth.log`, or any file with them): per source, failed logins
//! within a window (`ssh_bruteforce`, warning), and a successful login from
//! a source that just failed several times (`ssh_success_after_failures`,
//! critical: the guess may have worked).
//!
//! The user name is the attacker's text: `admin from 10.2.1.13 port 22` is
//! a valid thing to type at a login prompt. So a line is read as sshd
//! writes it: the syslog tag must be sshd's (`sshd`, `sshd-session` from
//! OpenSSH 9.8, `sshd-auth` from 10.0), the message must *start* with one
//! of sshd's phrases, and the source is the right-most `from ADDR port N`
//! (sshd prints the user before the address, never after), so nothing a
//! user name says can move the blame or forge another kind of line.

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
    /// A failed authentication; `invalid`: the user does not exist.
    Failed {
        user: String,
        src: IpAddr,
        port: u16,
        invalid: bool,
    },
    /// `Invalid user U from A port P`: a name that does not exist was tried
    /// (logged before any password, and alone when only keys are allowed).
    Invalid {
        user: String,
        src: IpAddr,
        port: u16,
    },
    Accepted {
        user: String,
        src: IpAddr,
        port: u16,
    },
}

impl Login {
    fn src(&self) -> IpAddr {
        match self {
            Login::Failed { src, .. } | Login::Invalid { src, .. } | Login::Accepted { src, .. } => *src,
        }
    }
}

/// The programs whose lines are sshd's.
const TAGS: &[&str] = &["sshd", "sshd-session", "sshd-auth"];
/// rsyslog and journald collapse repeats: the count is kept, up to this.
const MAX_REPEAT: usize = 1000;

/// The message of a line whose syslog tag is sshd's (`sshd[812]:` or
/// `sshd:`), the tag being the first word that ends in a colon, within
/// the first few words (timestamp, host).
fn sshd_message(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..6 {
        let rest_trimmed = rest.trim_start();
        let (word, after) = rest_trimmed.split_once(' ').unwrap_or((rest_trimmed, ""));
        if let Some(tag) = word.strip_suffix(':') {
            let program = tag.split_once('[').map_or(tag, |(p, pid)| if pid.ends_with(']') { p } else { "" });
            return TAGS.contains(&program).then_some(after);
        }
        rest = after;
    }
    None
}

/// `... from ADDR port N` at the right-most place it parses: (what comes
/// before, address, port).
fn from_addr_port(s: &str) -> Option<(&str, IpAddr, u16)> {
    for (i, _) in s.rmatch_indices(" from ") {
        let mut words = s[i + 6..].split(' ');
        let addr = words.next().and_then(|a| a.parse::<IpAddr>().ok());
        let port = match (words.next(), words.next()) {
            (Some("port"), Some(p)) => p.trim_end_matches(':').parse::<u16>().ok(),
            _ => None,
        };
        if let (Some(addr), Some(port)) = (addr, port) {
            return Some((&s[..i], addr, port));
        }
    }
    None
}

/// Reads OpenSSH's `Failed <method> for [invalid user] U from A port P`,
/// `Invalid user U from A port P` and `Accepted <method> for U from A port
/// P`, also inside `message repeated N times: [ ... ]`; returns the login
/// and how many times it happened. Anything else is `None`.
pub fn parse(line: &str) -> Option<(Login, usize)> {
    let mut msg = sshd_message(line)?;
    let mut times = 1;
    if let Some(r) = msg.strip_prefix("message repeated ") {
        let (n, rest) = r.split_once(" times: [ ")?;
        times = n.parse::<usize>().ok()?.clamp(1, MAX_REPEAT);
        msg = rest.strip_suffix(']').unwrap_or(rest).trim_end();
    }
    let login = if let Some(rest) = msg.strip_prefix("Invalid user ") {
        let (user, src, port) = from_addr_port(rest)?;
        Login::Invalid { user: user.to_string(), src, port }
    } else {
        let (accepted, rest) = match (msg.strip_prefix("Failed "), msg.strip_prefix("Accepted ")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return None,
        };
        // `<method> for `: the method is one word (password, publickey, none, keyboard-interactive/pam).
        let (_method, rest) = rest.split_once(" for ")?;
        let (user, src, port) = from_addr_port(rest)?;
        let (invalid, user) = match user.strip_prefix("invalid user ") {
            Some(u) if !accepted => (true, u),
            _ => (false, user),
        };
        let user = user.to_string();
        if accepted {
            Login::Accepted { user, src, port }
        } else {
            Login::Failed { user, src, port, invalid }
        }
    };
    Some((login, times))
}

/// When failures are an attack.
#[derive(Debug, Clone, PartialEq)]
pub struct SshPolicy {
    pub failures: usize,
    pub window: Duration,
    /// Sources never reported (a jump host), as (network, prefix).
    pub allow: Vec<(IpAddr, u8)>,
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
    /// The connection (source port) of the last `Invalid user` line: the
    /// `Failed ... for invalid user` that follows on it is the same attempt.
    invalid_port: Option<u16>,
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
        let (login, times) = parse(line)?;
        let src = login.src();
        if self.policy.allow.iter().any(|n| super::scan::in_net(src, *n)) {
            return None;
        }
        let window = self.policy.window.as_millis() as i64;
        if !self.sources.contains_key(&src) && self.sources.len() >= self.policy.max_sources {
            self.sources.retain(|_, s| s.failures.back().is_some_and(|(t, _)| now_ms - t <= window));
            if self.sources.len() >= self.policy.max_sources {
                // Still full of active sources (a botnet, an IPv6 /64): the
                // least recently failing tenth goes, so a new source is
                // always counted; said in the log, once per eviction.
                let mut ages: Vec<(i64, IpAddr)> =
                    self.sources.iter().map(|(ip, s)| (s.failures.back().map_or(i64::MIN, |f| f.0), *ip)).collect();
                let n = (self.policy.max_sources / 10).max(1).min(ages.len());
                ages.select_nth_unstable(n - 1);
                for (_, ip) in &ages[..n] {
                    self.sources.remove(ip);
                }
                tracing::warn!(
                    max_sources = self.policy.max_sources,
                    evicted = n,
                    "SSH sensor: more failing sources than it tracks; the least recent were forgotten"
                );
            }
        }
        let s = self.sources.entry(src).or_default();
        while s.failures.front().is_some_and(|(t, _)| now_ms - t > window) {
            s.failures.pop_front();
        }
        let (user, times) = match login {
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
                        ("user", clip(&user)),
                        ("failures_before", failed.to_string()),
                        ("failed_users", users(s)),
                        ("window_s", (window / 1000).to_string()),
                    ],
                );
                s.failures.clear();
                return Some(e);
            }
            Login::Invalid { user, port, .. } => {
                s.invalid_port = Some(port);
                (user, times)
            }
            Login::Failed { user, port, invalid, .. } => {
                // The first password tried for a name already counted as invalid.
                let same = invalid && s.invalid_port == Some(port);
                s.invalid_port = None;
                (user, if same { times - 1 } else { times })
            }
        };
        for _ in 0..times {
            if s.failures.len() < self.policy.failures * 4 {
                s.failures.push_back((now_ms, clip(&user)));
            }
        }
        if times == 0 || s.failures.len() < self.policy.failures || s.reported_ms.is_some_and(|r| now_ms - r < window) {
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
}

/// A user name as evidence: the attacker's text, at most 64 characters.
fn clip(user: &str) -> String {
    user.chars().take(64).collect()
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

/// `journalctl --follow` of sshd's messages (all its programs), read by a thread of its own;
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
            .args(["--follow", "--lines=0", "--output=short", "--no-pager"])
            // Same-field matches are ORed: OpenSSH 9.8 logs from sshd-session, 10.0 also from sshd-auth.
            .args(TAGS.iter().map(|t| format!("_COMM={t}")))
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn openssh_lines() {
        let failed =
            |user: &str, src: &str, port, invalid| Login::Failed { user: user.into(), src: ip(src), port, invalid };
        assert_eq!(parse(FAIL), Some((failed("admin", "10.2.1.10", 50412, true), 1)));
        assert_eq!(
            parse("Nov 28 09:30:09 c1 sshd[815]: Accepted publickey for lan from 2001:db8::5 port 50999 ssh2: ED25519 SHA256:x"),
            Some((Login::Accepted { user: "lan".into(), src: ip("2001:db8::5"), port: 50999 }, 1))
        );
        // OpenSSH 9.8 and later, with an RFC 3339 timestamp (rsyslog's default on Debian 13).
        assert_eq!(
            parse(
                "2026-12-01T09:30:01.123456+07:00 c1 sshd-session[4411]: Invalid user oracle from 10.2.1.12 port 40022"
            ),
            Some((Login::Invalid { user: "oracle".into(), src: ip("10.2.1.12"), port: 40022 }, 1))
        );
        assert_eq!(
            parse("Nov 28 09:30:01 c1 sshd[812]: message repeated 5 times: [ Failed password for root from 10.2.1.10 port 50412 ssh2]"),
            Some((failed("root", "10.2.1.10", 50412, false), 5))
        );
        assert_eq!(parse("Nov 28 09:30:01 c1 CRON[1]: Failed to start"), None);
        assert_eq!(parse("Nov 28 09:30:01 c1 sshd[1]: Failed password for root from nowhere port 1"), None);
        // Another program quoting sshd is not sshd.
        assert_eq!(
            parse("Nov 28 09:30:01 c1 logger: sshd[1]: Failed password for root from 10.2.1.13 port 22 ssh2"),
            None
        );
        assert_eq!(
            parse("Nov 28 09:30:01 c1 sshd-evil[1]: Failed password for root from 10.2.1.13 port 22 ssh2"),
            None
        );
    }

    #[test]
    fn a_user_name_never_moves_the_blame() {
        // The name typed at the prompt says "from 10.2.1.13 port 22": the real source is the right-most.
        let line = "Nov 28 09:30:01 c1 sshd[812]: Failed password for invalid user admin from 10.2.1.13 port 22 from 10.2.1.66 port 50412 ssh2";
        let (login, _) = parse(line).unwrap();
        assert_eq!(
            login,
            Login::Failed {
                user: "admin from 10.2.1.13 port 22".into(),
                src: ip("10.2.1.66"),
                port: 50412,
                invalid: true
            }
        );
        // A name that spells a whole Accepted line is still a failure of the real source.
        let forged = "Nov 28 09:30:01 c1 sshd[812]: Invalid user Accepted password for root from 10.2.1.13 port 22 ssh2 from 10.2.1.66 port 50413";
        assert_eq!(
            parse(forged).unwrap().0,
            Login::Invalid {
                user: "Accepted password for root from 10.2.1.13 port 22 ssh2".into(),
                src: ip("10.2.1.66"),
                port: 50413
            }
        );
        let mut w = SshWatch::new(SshPolicy::default());
        let events: Vec<Event> =
            (0..12).filter_map(|i| w.observe(&line.replace("50412", &format!("{}", 50000 + i)), i)).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].attributes["src"], "10.2.1.66");
        assert!(w.sources.keys().all(|s| *s == ip("10.2.1.66")), "the innocent host is nowhere");
    }

    proptest::proptest! {
        /// Whatever the user name, the blamed source is the one sshd wrote last.
        #[test]
        fn no_user_name_moves_the_blame(user in "[ -~]{0,80}", invalid in proptest::bool::ANY) {
            let prefix = if invalid { "Invalid user " } else { "Failed password for invalid user " };
            let line = format!("Nov 28 09:30:01 c1 sshd[812]: {prefix}{user} from 10.2.1.66 port 50412 ssh2");
            if let Some((login, _)) = parse(&line) {
                proptest::prop_assert_eq!(login.src(), ip("10.2.1.66"));
            }
            // Never a success, whatever the name spells.
            let accepted = matches!(parse(&line), Some((Login::Accepted { .. }, _)));
            proptest::prop_assert!(!accepted, "{}", line);
        }

        #[test]
        fn parse_never_panics(line in "\\PC{0,300}") {
            let _ = parse(&line);
        }
    }

    #[test]
    fn a_full_table_still_counts_a_new_source() {
        let mut w = SshWatch::new(SshPolicy { max_sources: 100, ..Default::default() });
        for i in 0..100u32 {
            let src = std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
            w.observe(&format!("Nov 28 09:30:01 c1 sshd[9]: Failed password for root from {src} port 1 ssh2"), 0);
        }
        let got: Vec<Event> = (0..10)
            .filter_map(|i| {
                w.observe(
                    &format!("Nov 28 09:30:01 c1 sshd[9]: Failed password for root from 10.2.1.99 port {i} ssh2"),
                    1,
                )
            })
            .collect();
        assert_eq!(got.len(), 1, "the new source is counted");
        assert!(w.sources.len() <= 100);
    }

    #[test]
    fn invalid_users_count_once_per_attempt() {
        let mut w = SshWatch::new(SshPolicy::default());
        // Keys only: sshd logs `Invalid user` and nothing else per attempt.
        let key_only: Vec<Event> = (0..10)
            .filter_map(|i| {
                w.observe(
                    &format!("Nov 28 09:30:01 c1 sshd-session[9]: Invalid user u{i} from 10.2.1.70 port {}", 40000 + i),
                    i,
                )
            })
            .collect();
        assert_eq!(key_only.len(), 1, "ten names tried: brute force");
        assert_eq!(key_only[0].attributes["failures"], "10");
        // Passwords: `Invalid user` then `Failed password for invalid user` on the same connection is one attempt.
        let mut w = SshWatch::new(SshPolicy::default());
        for i in 0..9 {
            w.observe(&format!("Nov 28 09:30:01 c1 sshd[9]: Invalid user u{i} from 10.2.1.71 port {}", 41000 + i), i);
            assert!(w
                .observe(
                    &format!(
                        "Nov 28 09:30:01 c1 sshd[9]: Failed password for invalid user u{i} from 10.2.1.71 port {} ssh2",
                        41000 + i
                    ),
                    i
                )
                .is_none());
        }
        assert_eq!(w.sources[&ip("10.2.1.71")].failures.len(), 9);
        // Collapsed repeats count as what they stand for.
        let mut w = SshWatch::new(SshPolicy::default());
        let e = w.observe("Nov 28 09:30:01 c1 sshd[812]: message repeated 11 times: [ Failed password for root from 10.2.1.72 port 50412 ssh2]", 0);
        assert_eq!(e.unwrap().attributes["failures"], "11");
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
