//! Every type error at once: serde stops at the first, so after each one the
//! offending key (or list element) is taken out of the document and the
//! rest parsed again. What is left parses into the type: its semantic
//! validation then runs too, and its findings are mapped back to the keys
//! and list positions of the file as written.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// Type errors reported at most per file (each costs a parse of the rest).
pub(crate) const MAX_TYPE_ERRORS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    // serde_yaml writes well-formed paths; a malformed one names nothing.
    super::locate::segments(path)
        .unwrap_or_default()
        .into_iter()
        .map(|s| match s {
            super::locate::Segment::Key(k) => Seg::Key(k.to_string()),
            super::locate::Segment::Index(i) => Seg::Index(i),
        })
        .collect()
}

fn render(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// What was taken out of the document, in the file's own coordinates.
#[derive(Debug, Default, Clone)]
pub(crate) struct Removed {
    /// Original key paths removed (with everything under them).
    paths: Vec<String>,
    /// Per list (original path): the original indices of elements removed.
    indices: BTreeMap<String, Vec<usize>>,
}

impl Removed {
    /// Maps a path in the repaired document to the file as written.
    pub(crate) fn original(&self, path: &str) -> String {
        let mut out: Vec<Seg> = Vec::new();
        for seg in parse_path(path) {
            match seg {
                Seg::Index(current) => {
                    let mut i = current;
                    if let Some(gone) = self.indices.get(&render(&out)) {
                        for &g in gone {
                            if g <= i {
                                i += 1;
                            }
                        }
                    }
                    out.push(Seg::Index(i));
                }
                key => out.push(key),
            }
        }
        render(&out)
    }

    /// True when `path` (original) lies in something removed: a problem
    /// there is a consequence of the removal, already reported.
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|r| {
            path == r || (path.starts_with(r.as_str()) && matches!(path.as_bytes().get(r.len()), Some(b'.' | b'[')))
        })
    }

    /// True when key `key` of `path` (original) was removed: its "missing
    /// field" is a consequence, not news.
    fn took(&self, path: &str, key: &str) -> bool {
        let full = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
        self.paths.contains(&full)
    }

    fn record(&mut self, original: &str) {
        let segs = parse_path(original);
        if let Some((Seg::Index(i), parent)) = segs.split_last() {
            let list = self.indices.entry(render(parent)).or_default();
            list.push(*i);
            list.sort_unstable();
        }
        self.paths.push(original.to_string());
    }
}

/// Takes the node at `segs` out of `doc`; false when there is none (or it is the root).
fn remove(doc: &mut Value, segs: &[Seg]) -> bool {
    let Some((last, parent)) = segs.split_last() else { return false };
    let mut node = doc;
    for seg in parent {
        node = match (seg, node) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// One type error: the path in the repaired document, the message, and
/// the location serde gave (meaningful only for the text as written).
pub(crate) struct Found {
    pub(crate) original_path: String,
    pub(crate) message: String,
    pub(crate) location: Option<(usize, usize)>,
}

/// Parses `text` into `T`, collecting every type error. Returns the value
/// left after the removals (`None` when the document could not be
/// repaired: a syntax error, or an error at its root), the errors, and
/// what was removed.
pub(crate) fn parse_all<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Found>, Removed) {
    let mut found = Vec::new();
    let mut removed = Removed::default();
    let first = match serde_yaml::from_str::<T>(text) {
        Ok(v) => return (Some(v), found, removed),
        Err(e) => e,
    };
    let Ok(mut doc) = serde_yaml::from_str::<Value>(text) else {
        let p = super::problem_from_yaml(&first);
        found.push(Found { original_path: p.path, message: p.message, location: p.line.zip(p.column) });
        return (None, found, removed);
    };
    let mut err = first;
    let mut first_pass = true;
    loop {
        let p = super::problem_from_yaml(&err);
        let location = if first_pass { p.line.zip(p.column) } else { None };
        first_pass = false;
        let (mut target, mut report_path, mut report) = (parse_path(&p.path), p.path.clone(), true);
        if let Some(key) = p.message.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            // Reported at the unknown key itself, which is what goes.
            target.push(Seg::Key(key.to_string()));
            report_path = render(&target);
        } else if p
            .message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .is_some_and(|key| removed.took(&removed.original(&p.path), key))
        {
            // We took its key out; the element goes, unreported. (One that
            // was missing in the file is reported and goes too, so the rest
            // is still read.)
            report = false;
        }
        let original = removed.original(&report_path);
        if report && !removed.covers(&original) {
            found.push(Found { original_path: original, message: p.message.clone(), location });
        }
        let target_original = removed.original(&render(&target));
        if found.len() >= MAX_TYPE_ERRORS || !remove(&mut doc, &target) {
            return (None, found, removed);
        }
        removed.record(&target_original);
        let Ok(again) = serde_yaml::to_string(&doc) else { return (None, found, removed) };
        match serde_yaml::from_str::<T>(&again) {
            Ok(v) => return (Some(v), found, removed),
            Err(e) => err = e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: String,
        #[serde(default)]
        every: Option<u32>,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        port: u16,
        #[serde(default)]
        weight: u8,
    }

    #[test]
    fn every_type_error_is_found_once_at_its_place_in_the_file() {
        let text = "name: x\nevery: often\nitems:\n  - id: a\n    port: 99999\n  - id: b\n    port: 80\n    wieght: 3\n  - id: c\n    port: 81\n    weight: heavy\n";
        let (value, found, removed) = parse_all::<Conf>(text);
        let got: Vec<(&str, &str)> =
            found.iter().map(|f| (f.original_path.as_str(), f.message.split(':').next().unwrap_or(""))).collect();
        assert_eq!(
            got,
            [
                ("every", "invalid type"),
                ("items[0].port", "invalid value"),
                ("items[1].wieght", "unknown field `wieght`, expected one of `id`, `port`, `weight`"),
                ("items[2].weight", "invalid type"),
            ],
            "{:?}",
            found.iter().map(|f| (&f.original_path, &f.message)).collect::<Vec<_>>()
        );
        assert_eq!(found[0].location, Some((2, 8)), "the first keeps serde's own location");
        // items[0] lost its required port and went; the others stay, under their own indices.
        let v = value.unwrap();
        assert_eq!(v.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(removed.original("items[0]"), "items[1]");
        assert_eq!(removed.original("items[1].port"), "items[2].port");
        assert!(removed.covers("items[0].port") && removed.covers("items[0]") && !removed.covers("items[1]"));
    }

    #[test]
    fn a_required_key_missing_is_news_even_after_other_removals() {
        let (v, found, _) = parse_all::<Conf>(
            "every: often
items: []
",
        );
        assert!(v.is_none());
        let msgs: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[1].starts_with("missing field `name`"), "{msgs:?}");
    }

    #[test]
    fn a_required_section_missing_is_one_problem_and_a_syntax_error_stops() {
        let (v, found, _) = parse_all::<Conf>("items: []\n");
        assert!(v.is_none());
        assert_eq!(found.len(), 1);
        assert!(found[0].message.starts_with("missing field `name`"), "{}", found[0].message);
        let (v, found, _) = parse_all::<Conf>("name: [x\n");
        assert!(v.is_none() && found.len() == 1);
    }
}
