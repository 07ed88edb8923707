//! Whole-system test support (and the network lab, `lab`): the real `tierwatch-collector` and
//! `tierwatch-agent` binaries, a PKI made with the collector's own CLI,
//! child processes that are stopped when the test ends, and plain HTTP reads.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod evidence;
pub mod lab;
pub mod loopback;
pub mod prometheus;

/// Folder of the binaries built by `cargo build --workspace --bins` in the
/// same profile as this test (`target/debug`), found from the test executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TW_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // A test runs as target/debug/deps/NAME-HASH, a helper binary as target/debug/NAME.
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        dir
    }
}

/// Path of a workspace binary; fails with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (the README test command does)",
        p.display()
    );
    p
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// Runs the collector's CLI and insists it succeeds.
pub fn collector_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = run(Command::new(bin("tierwatch-collector")).args(args))?;
    if !out.status.success() {
        bail!("tierwatch-collector {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PKI made with `pki init` and `pki issue`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A CA plus a server certificate for 127.0.0.1 named `collector`.
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        let d = dir.to_str().context("utf-8 path")?;
        collector_cli(&["pki", "init", "--dir", d, "--days", "2"])?;
        collector_cli(&[
            "pki",
            "issue",
            "--dir",
            d,
            "--node",
            "collector",
            "--server",
            "--san",
            "127.0.0.1",
            "--days",
            "2",
        ])?;
        Ok(Pki { dir: dir.to_path_buf() })
    }

    /// The PKI already in `dir`, or a new one.
    pub fn open_or_new(dir: &Path) -> anyhow::Result<Pki> {
        if dir.join("ca.crt").is_file() {
            return Ok(Pki { dir: dir.to_path_buf() });
        }
        Self::new(dir)
    }

    /// Issues a client certificate for `node`.
    pub fn node(&self, node: &str) -> anyhow::Result<()> {
        collector_cli(&[
            "pki",
            "issue",
            "--dir",
            self.dir.to_str().context("utf-8 path")?,
            "--node",
            node,
            "--days",
            "2",
        ])?;
        Ok(())
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, stdout discarded, stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        Self::spawn_command(name, Command::new(program).args(args).stdout(Stdio::null()), log)
    }

    /// Starts a prepared command (stdin closed unless set, stderr to `log`).
    pub fn spawn_command(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(log)?;
        let child = cmd.stdin(Stdio::null()).stderr(file).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Takes the child's piped stdout.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("{} already stopped", self.name) };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM; log:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal by name with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// GETs `path` over plain HTTP/1.0; returns status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status code")?;
    Ok((code, body.to_string()))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wall-clock ms since the epoch, as the agents and the collector stamp them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether a tool is on PATH.
pub fn have(tool: &str) -> bool {
    which(tool).is_some()
}

/// Where `tool` is: on the PATH, or in the sbin directories a non-root
/// PATH lacks (daemons such as nginx and dnsmasq live there).
pub fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    if out.status.success() && !path.trim().is_empty() {
        return Some(PathBuf::from(path.trim()));
    }
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

/// True when running as root (network namespaces, raw sockets).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}
