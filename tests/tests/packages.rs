//! The Debian packages (root): built by cargo-deb from the workspace's
//! binaries, installed with `dpkg -i` into a clean Debian 12 chroot made by
//! debootstrap. Checks what postinst sets up (user, state directories,
//! permissions, units enabled), that the units pass `systemd-analyze
//! verify` and rate 2.0 or lower in `systemd-analyze security`, and that an
//! upgrade, a remove and a purge keep the spool and the database.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Debian 12 root filesystem, removed when dropped.
struct Chroot {
    dir: PathBuf,
    proc_mounted: bool,
}

impl Chroot {
    /// A fresh one: debootstrap (minbase and systemd) from the machine's own
    /// Debian mirror, cached as a tarball under target/ between local runs.
    fn create(dir: PathBuf) -> anyhow::Result<Chroot> {
        let cache = tierwatch_tests::workspace().join("target/tw-bookworm-chroot.tar");
        std::fs::create_dir_all(&dir)?;
        if cache.is_file() {
            run(Command::new("tar").arg("-xf").arg(&cache).arg("-C").arg(&dir))?;
        } else {
            let mirror = mirror();
            eprintln!("debootstrap bookworm from {mirror} (a few minutes)");
            run(Command::new("debootstrap")
                .args(["--variant=minbase", "--include=systemd,adduser,init-system-helpers,procps", "bookworm"])
                .arg(&dir)
                .arg(&mirror))?;
            if std::env::var("CI").is_err() {
                run(Command::new("tar").arg("-cf").arg(&cache).arg("-C").arg(&dir).arg("."))?;
            }
        }
        let mut c = Chroot { dir, proc_mounted: false };
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(c.dir.join("proc")))?;
        c.proc_mounted = true;
        Ok(c)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("chroot").arg(&self.dir).args(args).env("DEBIAN_FRONTEND", "noninteractive"))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if self.proc_mounted {
            let _ = Command::new("umount").arg("-l").arg(self.dir.join("proc")).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The machine's Debian mirror (so CI uses the registry it may reach).
fn mirror() -> String {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let classic = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| !u.contains("security"))
        .or_else(|| {
            classic
                .lines()
                .filter_map(|l| l.strip_prefix("deb "))
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
                .find(|u| !u.contains("security"))
        })
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// Builds the package of `crate_name` from the binaries already built (dev profile).
fn package(crate_name: &str, out: &Path, revision: &str) -> anyhow::Result<PathBuf> {
    let ws = tierwatch_tests::workspace();
    let printed = run(Command::new("cargo")
        .current_dir(&ws)
        .args(["deb", "--no-build", "--profile", "dev", "-p", crate_name, "--deb-revision", revision, "--output"])
        .arg(out))?;
    let deb = printed.lines().rev().find(|l| l.trim().ends_with(".deb")).context("cargo deb printed no .deb")?;
    Ok(PathBuf::from(deb.trim()))
}

fn exposure(chroot: &Chroot, unit: &str) -> anyhow::Result<f64> {
    let out = chroot.exec(&["systemd-analyze", "security", "--offline=yes", &format!("/lib/systemd/system/{unit}")])?;
    let line = out.lines().find(|l| l.contains("Overall exposure level")).context("no exposure line")?;
    let score = line.split(':').nth(1).and_then(|r| r.split_whitespace().next()).context("no score")?;
    Ok(score.parse()?)
}

#[test]
fn packages_install_on_clean_debian_12_and_keep_state_across_upgrade_and_removal() -> anyhow::Result<()> {
    let missing: Vec<&str> =
        ["cargo-deb", "debootstrap", "chroot"].into_iter().filter(|t| !tierwatch_tests::have(t)).collect();
    if !tierwatch_tests::is_root() || !missing.is_empty() {
        let why =
            if missing.is_empty() { "needs root (chroot, mount)".to_string() } else { format!("missing {missing:?}") };
        assert!(
            std::env::var("CI").is_err(),
            "the package test must run in CI: {why} (scripts/test.sh installs the tools)"
        );
        eprintln!("SKIPPED packages_install_on_clean_debian_12...: {why}");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let debs = work.path().join("debs");
    let agent = package("tierwatch-agent", &debs, "1")?;
    let collector = package("tierwatch-collector", &debs, "1")?;
    let agent_2 = package("tierwatch-agent", &debs.join("2"), "2")?;
    let collector_2 = package("tierwatch-collector", &debs.join("2"), "2")?;
    let chroot = Chroot::create(work.path().join("root"))?;
    let inside = |deb: &Path| -> anyhow::Result<String> {
        let name = deb.file_name().and_then(|n| n.to_str()).context("deb name")?.to_string();
        std::fs::copy(deb, chroot.path(&format!("/tmp/{name}")))?;
        Ok(format!("/tmp/{name}"))
    };

    // A first install on a clean system.
    let (a1, c1) = (inside(&agent)?, inside(&collector)?);
    chroot.exec(&["dpkg", "-i", &a1, &c1])?;
    let user = chroot.exec(&["getent", "passwd", "tierwatch"])?;
    assert!(user.contains("/usr/sbin/nologin"), "{user}");
    for (dir, want) in [
        ("/var/lib/tierwatch-agent", "tierwatch:tierwatch 750"),
        ("/var/lib/tierwatch-collector", "tierwatch:tierwatch 750"),
        ("/etc/tierwatch", "root:tierwatch 750"),
        ("/etc/tierwatch/agent.yaml", "root:tierwatch 640"),
        ("/etc/tierwatch/api.token", "root:tierwatch 640"),
    ] {
        assert_eq!(chroot.exec(&["stat", "-c", "%U:%G %a", dir])?.trim(), want, "{dir}");
    }
    let token = std::fs::read_to_string(chroot.path("/etc/tierwatch/api.token"))?.trim().to_string();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "a random API token: {token:?}");
    let conffiles = chroot.exec(&["dpkg-query", "-W", "-f=${Conffiles}", "tierwatch-collector"])?;
    for f in ["/etc/tierwatch/collector.yaml", "/etc/tierwatch/rules.yaml", "/etc/tierwatch/topology.yaml"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    assert!(chroot
        .exec(&["dpkg-query", "-W", "-f=${Conffiles}", "tierwatch-agent"])?
        .contains("/etc/tierwatch/agent.yaml"));
    assert!(chroot.exec(&["tierwatch-agent", "--version"])?.contains("tierwatch-agent"));
    assert!(chroot.exec(&["tierwatch-collector", "--version"])?.contains("tierwatch-collector"));
    for unit in ["tierwatch-agent.service", "tierwatch-collector.service"] {
        assert!(
            // A symlink to an absolute path inside the chroot: look at the link itself.
            std::fs::symlink_metadata(chroot.path(&format!("/etc/systemd/system/multi-user.target.wants/{unit}")))
                .is_ok(),
            "{unit} not enabled at boot"
        );
        let verify = Command::new("chroot")
            .arg(&chroot.dir)
            .args(["systemd-analyze", "verify", &format!("/lib/systemd/system/{unit}")])
            .output()?;
        let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
        assert!(verify.status.success() && !said.contains("tierwatch"), "systemd-analyze verify {unit}:\n{said}");
        let score = exposure(&chroot, unit)?;
        eprintln!("{unit}: systemd-analyze security exposure {score}");
        assert!(score <= 2.0, "{unit} exposure {score} > 2.0");
    }
    // The operations guide's first steps: a CA and certificates, then the
    // shipped example configurations check as installed.
    let pki = "/etc/tierwatch/pki";
    chroot.exec(&["tierwatch-collector", "pki", "init", "--dir", pki])?;
    chroot.exec(&[
        "tierwatch-collector",
        "pki",
        "issue",
        "--dir",
        pki,
        "--node",
        "collector",
        "--server",
        "--san",
        "collector.angiang.gov.vn",
    ])?;
    chroot.exec(&["tierwatch-collector", "pki", "issue", "--dir", pki, "--node", "nui-cam"])?;
    chroot.exec(&["tierwatch-agent", "check-config", "/etc/tierwatch/agent.yaml"])?;
    chroot.exec(&["tierwatch-collector", "check-config", "/etc/tierwatch/collector.yaml"])?;

    // State and a locally edited configuration survive an upgrade.
    std::fs::create_dir_all(chroot.path("/var/lib/tierwatch-agent/spool"))?;
    std::fs::write(chroot.path("/var/lib/tierwatch-agent/spool/segment-marker"), b"unsent batches")?;
    std::fs::write(chroot.path("/var/lib/tierwatch-collector/collector.db"), b"the state database")?;
    let edited =
        std::fs::read_to_string(chroot.path("/etc/tierwatch/agent.yaml"))?.replace("node: nui-cam", "node: long-xuyen");
    std::fs::write(chroot.path("/etc/tierwatch/agent.yaml"), &edited)?;
    let (a2, c2) = (inside(&agent_2)?, inside(&collector_2)?);
    chroot.exec(&["dpkg", "-i", &a2, &c2])?;
    let version = chroot.exec(&["dpkg-query", "-W", "-f=${Version}", "tierwatch-agent"])?;
    assert!(version.ends_with("-2"), "upgraded: {version}");
    assert_eq!(std::fs::read_to_string(chroot.path("/etc/tierwatch/agent.yaml"))?, edited, "local edit kept");
    let kept = |what: &str| -> anyhow::Result<()> {
        anyhow::ensure!(chroot.path("/var/lib/tierwatch-agent/spool/segment-marker").is_file(), "spool lost on {what}");
        anyhow::ensure!(chroot.path("/var/lib/tierwatch-collector/collector.db").is_file(), "database lost on {what}");
        Ok(())
    };
    kept("upgrade")?;
    assert_eq!(
        std::fs::read_to_string(chroot.path("/etc/tierwatch/api.token"))?.trim(),
        token,
        "the API token is kept on upgrade"
    );

    // Remove, then purge: the state stays, the configuration goes with the purge.
    chroot.exec(&["dpkg", "-r", "tierwatch-agent", "tierwatch-collector"])?;
    kept("remove")?;
    assert!(chroot.path("/etc/tierwatch/agent.yaml").is_file(), "conffiles stay on remove");
    chroot.exec(&["dpkg", "-P", "tierwatch-agent", "tierwatch-collector"])?;
    kept("purge")?;
    assert!(!chroot.path("/etc/tierwatch/agent.yaml").exists(), "conffiles go on purge");
    assert!(!chroot.path("/etc/tierwatch/api.token").exists(), "the generated token goes on purge");
    Ok(())
}
