//! The house keeps its shape: inside each crate, module files import only
//! from their own layer or below (the layers are the table under
//! "## Layers" in ARCHITECTURE.md), and never in a circle.
//!
//! Imports are read as text, the way a reviewer reads them: `use crate::`,
//! `use super::` and `use self::` lines (braces expanded) and inline
//! `crate::a::b` paths, each mapped to the deepest module file that exists.
//! A module using its own submodules is composition, not an import. Test
//! modules (`#[cfg(test)] mod ... {` to the end of the file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Module path (`alert/engine`; `` for the crate root) → file, for every
/// module file under `src/` (binaries left out).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            out.insert(parts.join("/"), path);
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let path = path.trim();
    let Some(open) = path.find('{') else { return vec![path.to_string()] };
    let close = path.rfind('}').unwrap_or(path.len());
    let (head, body) = (&path[..open], &path[open + 1..close]);
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for ch in body.chars() {
        match ch {
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            '{' => {
                depth += 1;
                cur.push(ch)
            }
            '}' => {
                depth -= 1;
                cur.push(ch)
            }
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts.iter().filter(|p| !p.trim().is_empty()).flat_map(|p| expand(p)).map(|p| format!("{head}{p}")).collect()
}

/// The source without its test module and comments.
fn code(text: &str) -> String {
    let cut = text
        .match_indices("#[cfg(test)]")
        .find(|(i, _)| {
            let rest = text[i + 12..].trim_start();
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            rest.starts_with("mod ") && rest.split('\n').next().is_some_and(|l| l.contains('{'))
        })
        .map_or(text.len(), |(i, _)| i);
    text[..cut].lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The module paths `me` names, resolved to segments from the crate root.
fn references(code: &str, me: &[&str]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let stmt: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        if ["crate::", "super::", "self::"].iter().any(|p| stmt.starts_with(p)) {
            paths.extend(expand(&stmt));
        }
    }
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let tail: String = code[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        paths.push(tail);
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let p = p.split(" as ").next().unwrap_or("").trim().to_string();
            let mut segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let mut base: Vec<String> = me.iter().map(|s| s.to_string()).collect();
            match segs.first() {
                Some(&"crate") => {
                    base.clear();
                    segs.remove(0);
                }
                Some(_) => {
                    while let Some(&s) = segs.first() {
                        match s {
                            "super" => {
                                base.pop();
                            }
                            "self" => {}
                            _ => break,
                        }
                        segs.remove(0);
                    }
                }
                None => return None,
            }
            base.extend(segs.iter().map(|s| s.to_string()));
            Some(base)
        })
        .collect()
}

/// Crate directory → (module pattern → layer), from ARCHITECTURE.md's
/// "## Layers" table: `| crate | layer | modules |`, modules comma-separated,
/// `x/*` for x and everything under it (a more specific entry wins).
fn layers() -> BTreeMap<String, Vec<(String, u32)>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text.split("\n## Layers").nth(1).expect("ARCHITECTURE.md has a ## Layers section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [krate, layer, mods, ..] = cells[..] else { continue };
        let Ok(layer) = layer.parse::<u32>() else { continue };
        for m in mods.split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                out.entry(krate.trim_matches('`').trim_end_matches('/').to_string())
                    .or_default()
                    .push((m.to_string(), layer));
            }
        }
    }
    out
}

fn layer_of(table: &[(String, u32)], module: &str) -> Option<u32> {
    let mut best: Option<(usize, u32)> = None;
    for (pattern, layer) in table {
        let score = if let Some(prefix) = pattern.strip_suffix("/*") {
            (module == prefix || module.starts_with(&format!("{prefix}/"))).then_some(prefix.len())
        } else {
            (module == pattern).then_some(pattern.len() + 1)
        };
        if let Some(s) = score {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, *layer));
            }
        }
    }
    best.map(|(_, l)| l)
}

/// Every import between module files of `krate`: (from, to) → names.
fn edges(krate: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = root().join(krate).join("src");
    let mods = modules(&src);
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (me, file) in &mods {
        if me.is_empty() || me == "main" {
            continue;
        }
        let me_segs: Vec<&str> = me.split('/').collect();
        let text = code(&std::fs::read_to_string(file).unwrap());
        for r in references(&text, &me_segs) {
            let Some(k) = (0..=r.len()).rev().find(|&k| mods.contains_key(&r[..k].join("/"))) else { continue };
            let target = r[..k].join("/");
            // The crate root, and a module using its own submodules, are no import.
            if target.is_empty() || (target.len() >= me.len() && target.starts_with(me.as_str())) {
                continue;
            }
            out.entry((me.clone(), target)).or_default().insert(r[k..].join("::"));
        }
    }
    out
}

/// Strongly connected components with more than one module.
fn circles(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a).or_default().push(b);
        graph.entry(b).or_default();
    }
    // Kosaraju: reachability both ways.
    let reach = |from: &str, reverse: bool| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(v) = stack.pop() {
            if !seen.insert(v.clone()) {
                continue;
            }
            for (a, b) in edges.keys() {
                let (x, y) = if reverse { (b, a) } else { (a, b) };
                if *x == v {
                    stack.push(y.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for v in graph.keys() {
        if done.contains(*v) {
            continue;
        }
        let both: Vec<String> = reach(v, false).intersection(&reach(v, true)).cloned().collect();
        done.extend(both.iter().cloned());
        if both.len() > 1 {
            out.push(both);
        }
    }
    out
}

const CRATES: [&str; 5] = ["protocol", "yamlconf", "runtime", "agent", "collector"];

#[test]
fn no_module_imports_from_a_higher_layer_or_in_a_circle() {
    let table = layers();
    let mut problems = Vec::new();
    for krate in CRATES {
        let edges = edges(krate);
        for c in circles(&edges) {
            problems.push(format!("{krate}: import circle among {}", c.join(", ")));
        }
        let Some(layers) = table.get(krate) else { continue };
        let src = root().join(krate).join("src");
        for m in modules(&src).keys().filter(|m| !m.is_empty() && *m != "main") {
            if layer_of(layers, m).is_none() {
                problems.push(format!("{krate}/src/{m}: in no layer of ARCHITECTURE.md's ## Layers table"));
            }
        }
        for ((from, to), names) in &edges {
            if let (Some(a), Some(b)) = (layer_of(layers, from), layer_of(layers, to)) {
                if b > a {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    problems.push(format!(
                        "{krate}: {from} (layer {a}) imports {to} (layer {b}) upward: {}",
                        names.join(", ")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the house lost its shape:\n{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_imports_a_reviewer_sees() {
    let text = "use crate::alert::{model::{Ack, Severity}, Alerting};\nuse super::Http;\nfn f() { crate::timestamp::rfc3339(0); }\n// use crate::ignored::X;\n#[cfg(test)]\nmod tests {\n    use crate::test_only::Y;\n}\n";
    let refs = references(&code(text), &["http", "alerts"]);
    let joined: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    assert!(joined.contains(&"alert::model::Ack".to_string()), "{joined:?}");
    assert!(joined.contains(&"alert::Alerting".to_string()), "{joined:?}");
    assert!(joined.contains(&"http::Http".to_string()), "{joined:?}");
    assert!(joined.contains(&"timestamp::rfc3339".to_string()), "{joined:?}");
    assert!(!joined.iter().any(|j| j.contains("ignored") || j.contains("test_only")), "{joined:?}");
    let table = vec![("alert/*".to_string(), 4), ("alert/model".to_string(), 1)];
    assert_eq!(layer_of(&table, "alert/engine"), Some(4));
    assert_eq!(layer_of(&table, "alert"), Some(4));
    assert_eq!(layer_of(&table, "alert/model"), Some(1));
    assert_eq!(layer_of(&table, "alerting"), None);
    let mut e = BTreeMap::new();
    e.insert(("a".to_string(), "b".to_string()), BTreeSet::new());
    e.insert(("b".to_string(), "a".to_string()), BTreeSet::new());
    e.insert(("b".to_string(), "c".to_string()), BTreeSet::new());
    assert_eq!(circles(&e), vec![vec!["a".to_string(), "b".to_string()]]);
}
