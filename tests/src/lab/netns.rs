//! Network namespaces of the lab: created with iproute2, named
//! `tw-<pid>-<lab>-<role>` so that namespaces of a run that died (its pid is
//! gone) are found and removed by the next run.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Prefix of every lab namespace.
pub const PREFIX: &str = "tw-";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace the lab created; deleted (with its processes) by [`Netns::delete`].
#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up and IPv6 off (no autoconfiguration noise).
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(|_| ())
    }

    /// GETs `path` from `addr` over plain HTTP from inside the namespace.
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let out = self.exec(crate::bin("tw-labnet"), &["get", &addr.to_string(), path])?;
        let (code, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        Ok((code.trim().parse().context("status code")?, body.to_string()))
    }

    /// Sends `method path` with a JSON `body` (and a bearer `token`) from inside the namespace.
    pub fn http_send(
        &self,
        method: &str,
        addr: std::net::SocketAddr,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let addr = addr.to_string();
        let mut args = vec!["send", method, &addr, path, body];
        args.extend(token);
        let out = self.exec(crate::bin("tw-labnet"), &args)?;
        let (code, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        Ok((code.trim().parse().context("status code")?, body.to_string()))
    }

    /// A command that runs `program ARGS` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program).args(args);
        c
    }

    /// Runs `program ARGS` inside the namespace to completion; fails with its stderr.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> anyhow::Result<String> {
        let program = program.as_ref().to_owned();
        let out = self
            .command(&program, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program:?} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{} {} (in {}): {}{}",
                program.to_string_lossy(),
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills every process inside and deletes the namespace.
    pub fn delete(&self) {
        delete_by_name(&self.name);
    }
}

fn delete_by_name(name: &str) {
    // A process may still be entering (`ip netns exec` joins some time after
    // it starts): kill until none is left, a few rounds at most.
    for _ in 0..5 {
        let pids = ip(&["netns", "pids", name]).unwrap_or_default();
        if pids.split_whitespace().next().is_none() {
            break;
        }
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = ip(&["netns", "del", name]);
}

/// Held while stale namespaces are removed. Tests of one binary run in
/// parallel: one that stages a crashed run holds it until its orphan is
/// inside, so another test's cleanup cannot delete the namespace between
/// the orphan's start and its entry (the orphan would then outlive every
/// cleanup, in a namespace no longer named).
pub fn cleanup_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every lab namespace on the machine.
pub fn list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Removes namespaces left by runs whose process is gone (a crash or `kill -9`);
/// returns how many. Namespaces of live processes (parallel runs) are kept.
pub fn remove_stale() -> usize {
    let _held = cleanup_lock();
    let mut removed = 0;
    for name in list() {
        let owner = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            delete_by_name(&name);
            removed += 1;
        }
    }
    removed
}
