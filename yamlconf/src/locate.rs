//! Finds the line and column of a key path in block-style YAML text, so that
//! problems found after parsing point at the right place. Flow-style
//! collections are not descended into; the deepest key found is returned.

#[derive(Debug, Clone)]
pub(crate) enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The keys and list indices of `path` (`targets[3].port`); `None` when an index is malformed.
pub(crate) fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Segment::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }
    Some(out)
}

/// A significant line: 1-based number, indent (0-based column of content), content.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

fn significant_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_start_matches(' ');
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                return None;
            }
            Some(Line { no: i + 1, indent: raw.len() - trimmed.len(), text: trimmed.trim_end() })
        })
        .collect()
}

fn key_of(text: &str) -> Option<&str> {
    let (k, _) = text.split_once(':')?;
    let k = k.trim();
    Some(k.trim_matches('"').trim_matches('\''))
}

/// Returns the (1-based line, 1-based column) of `path` in `text`, or of its
/// deepest prefix that can be found; `None` when not even the first key is found.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let segs = segments(path)?;
    let mut scope: Vec<Line<'_>> = significant_lines(text);
    let mut found: Option<(usize, usize)> = None;
    for seg in segs {
        let Some(first) = scope.first().copied() else { break };
        let indent = first.indent;
        let at_level = |l: &Line<'_>| l.indent == indent;
        let mut hit = None;
        match seg {
            Segment::Key(k) => {
                for (i, l) in scope.iter().enumerate() {
                    if l.indent < indent {
                        break;
                    }
                    if at_level(l) && key_of(l.text) == Some(k) {
                        hit = Some(i);
                        break;
                    }
                }
            }
            Segment::Index(n) => {
                let mut seen = 0;
                for (i, l) in scope.iter().enumerate() {
                    if l.indent < indent {
                        break;
                    }
                    if at_level(l) && (l.text == "-" || l.text.starts_with("- ")) {
                        if seen == n {
                            hit = Some(i);
                            break;
                        }
                        seen += 1;
                    }
                }
            }
        }
        let Some(i) = hit else { break };
        let line = scope[i];
        found = Some((line.no, line.indent + 1));
        // The children: for a sequence item, its inline content plus the
        // following deeper lines; for a key, the following deeper lines, or an
        // inline "- x" value block when the sequence is not indented.
        let mut children = Vec::new();
        if let Segment::Index(_) = seg {
            let inline = line.text[1..].trim_start();
            if !inline.is_empty() {
                let indent = line.indent + (line.text.len() - inline.len());
                children.push(Line { no: line.no, indent, text: inline });
            }
        }
        for l in &scope[i + 1..] {
            let deeper = l.indent > line.indent
                || (matches!(seg, Segment::Key(_)) && l.indent == line.indent && l.text.starts_with('-'));
            if !deeper {
                break;
            }
            children.push(*l);
        }
        scope = children;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment
collector:
  endpoints:
    - https://a:7443
    - https://b:7443
targets:
- name: gw
  probe: icmp
- name: portal
  probe:  tcp
  port: 443
nested:
  list:
    -
      deep: 1
";

    #[test]
    fn finds_keys_and_indices() {
        assert_eq!(locate(DOC, "collector"), Some((2, 1)));
        assert_eq!(locate(DOC, "collector.endpoints"), Some((3, 3)));
        assert_eq!(locate(DOC, "collector.endpoints[1]"), Some((5, 5)));
        assert_eq!(locate(DOC, "targets[0].name"), Some((7, 3)));
        assert_eq!(locate(DOC, "targets[1].port"), Some((11, 3)));
        assert_eq!(locate(DOC, "targets[1].probe"), Some((10, 3)));
        assert_eq!(locate(DOC, "nested.list[0].deep"), Some((15, 7)));
    }

    #[test]
    fn falls_back_to_deepest_prefix() {
        assert_eq!(locate(DOC, "targets[1].missing"), Some((9, 1)));
        assert_eq!(locate(DOC, "nothing"), None);
        assert_eq!(locate(DOC, ""), None);
    }

    use proptest::prelude::*;

    fn arb_yaml() -> impl Strategy<Value = serde_yaml::Value> {
        let leaf = prop_oneof![
            any::<u16>().prop_map(|n| serde_yaml::Value::from(n as u64)),
            "[a-z]{1,6}".prop_map(serde_yaml::Value::from)
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(serde_yaml::Value::Sequence),
                prop::collection::btree_map("k[a-z]{1,5}", inner, 1..4).prop_map(|m| {
                    serde_yaml::Value::Mapping(m.into_iter().map(|(k, v)| (serde_yaml::Value::from(k), v)).collect())
                }),
            ]
        })
    }

    fn paths(v: &serde_yaml::Value, prefix: String, out: &mut Vec<(String, String)>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().unwrap_or_default();
                    let p = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                    out.push((p.clone(), k.to_string()));
                    paths(v, p, out);
                }
            }
            serde_yaml::Value::Sequence(s) => {
                for (i, v) in s.iter().enumerate() {
                    paths(v, format!("{prefix}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    proptest! {
        /// Every key of a document serde_yaml writes is located on a line
        /// holding that key, at its column.
        #[test]
        fn locates_every_key_serde_yaml_writes(doc in prop::collection::btree_map("k[a-z]{1,5}", arb_yaml(), 1..4)) {
            let value = serde_yaml::Value::Mapping(doc.into_iter().map(|(k, v)| (serde_yaml::Value::from(k), v)).collect());
            let text = serde_yaml::to_string(&value).unwrap();
            let mut ps = Vec::new();
            paths(&value, String::new(), &mut ps);
            let lines: Vec<&str> = text.lines().collect();
            for (p, key) in ps {
                let (l, c) = locate(&text, &p).unwrap_or_else(|| panic!("{p} not found in\n{text}"));
                let at = &lines[l - 1][c - 1..];
                prop_assert!(at.starts_with(&format!("{key}:")), "{} -> {}:{} {:?}\n{}", p, l, c, at, text);
            }
        }
    }
}
