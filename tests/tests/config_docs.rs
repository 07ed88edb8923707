//! Every key a configuration file may hold is documented: each field of a
//! `#[serde(deny_unknown_fields)]` struct of the agent's and the
//! collector's configuration appears in their reference docs, as a key
//! (`` `key` ``, `` `a.key` ``, `key:` in an example, `{key: ...}`).
//! Like `docs/metrics.md` for metrics: a new key without a line in the docs
//! fails here. The same for security event kinds: every kind the code
//! emits is in the catalogue (else it would be counted as `other`) and in
//! `docs/security.md`.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// (struct, key) of every field of the `deny_unknown_fields` structs in
/// `file` (outside its tests), a `rename` applied.
fn keys(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("deny_unknown_fields") {
        rest = &rest[i..];
        let Some(s) = rest.find("struct ") else { break };
        let after = &rest[s + 7..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (Some(open), Some(close)) = (after.find('{'), after.find("\n}")) else { break };
        if open > close || after[..open].contains(';') {
            rest = &after[open.min(after.len())..];
            continue;
        }
        let mut rename = None;
        for line in after[open + 1..close].lines().map(str::trim) {
            if line.starts_with("#[") {
                if let Some(r) = line.split("rename = \"").nth(1).and_then(|r| r.split('"').next()) {
                    rename = Some(r.to_string());
                }
                continue;
            }
            let field = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
            let Some((key, _)) = field.split_once(':') else { continue };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                continue;
            }
            out.push((name.clone(), rename.take().unwrap_or_else(|| key.to_string())));
        }
        rest = &after[close..];
    }
    out
}

fn documented(docs: &str, key: &str) -> bool {
    let b = docs.as_bytes();
    docs.match_indices(key).any(|(i, _)| {
        let before = if i == 0 { b'\n' } else { b[i - 1] };
        let after = b.get(i + key.len()).copied().unwrap_or(b'\n');
        let line_start = docs[..i].rfind('\n').map_or(0, |n| n + 1);
        let yaml_key = docs[line_start..i].trim_start_matches([' ', '-']).is_empty() && after == b':';
        (matches!(before, b'`' | b'.' | b'{') && matches!(after, b'`' | b':' | b',' | b'.' | b'}' | b' '))
            || (before == b' ' && after == b':' && docs[..i].ends_with(", "))
            || yaml_key
    })
}

fn check(docs: &[&str], sources: &[&str]) -> Vec<String> {
    let text: String = docs.iter().map(|d| std::fs::read_to_string(root().join(d)).unwrap()).collect();
    let mut missing = Vec::new();
    for file in sources {
        let found = keys(file);
        assert!(!found.is_empty(), "{file}: no configuration structs found; is the reader still right?");
        for (st, key) in found {
            if !documented(&text, &key) {
                missing.push(format!("{file}: {st}.{key} is in none of {docs:?}"));
            }
        }
    }
    missing
}

#[test]
fn every_agent_and_collector_key_is_documented() {
    let mut missing = check(
        &["docs/agent-config.md", "docs/security.md"],
        &["agent/src/config/mod.rs", "agent/src/config/target.rs", "agent/src/sensor/mod.rs"],
    );
    missing.extend(check(
        &["docs/collector-config.md", "docs/alerts.md"],
        &[
            "collector/src/config.rs",
            "collector/src/admission.rs",
            "collector/src/topology.rs",
            "collector/src/remote_write/mod.rs",
            "collector/src/alert/rules/raw.rs",
            "collector/src/alert/maintenance.rs",
            "collector/src/alert/notify/mod.rs",
            "collector/src/alert/notify/webhook.rs",
            "collector/src/alert/notify/alertmanager.rs",
            "collector/src/alert/notify/telegram.rs",
            "collector/src/alert/notify/email.rs",
            "protocol/src/validate.rs",
        ],
    ));
    assert!(missing.is_empty(), "undocumented configuration keys:\n{}", missing.join("\n"));
}

#[test]
fn the_reader_finds_keys_and_the_check_fails_on_a_missing_one() {
    let dir = root().join("target/config-docs-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("src.rs"),
        "#[serde(deny_unknown_fields)]\npub struct RawX {\n    /// doc\n    pub listen: u16,\n    #[serde(rename = \"for\")]\n    pub for_: u8,\n    pub brand_new_key: bool,\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("doc.md"), "| `x.listen` | ... |\n```yaml\n  for: 1m\n```\n").unwrap();
    assert_eq!(
        keys("target/config-docs-test/src.rs"),
        [
            ("RawX".to_string(), "listen".to_string()),
            ("RawX".into(), "for".into()),
            ("RawX".into(), "brand_new_key".into())
        ]
    );
    let missing = check(&["target/config-docs-test/doc.md"], &["target/config-docs-test/src.rs"]);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains("brand_new_key"));
}

/// Rust sources under `dir`, recursively, outside their tests.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            out.push((p.display().to_string(), code));
        }
    }
}

/// Kinds the code makes: `Event::new("kind"`, `event("kind"`, `("kind", Severity::`.
fn emitted_kinds(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices('"') {
        let Some(len) = code[i + 1..].find('"') else { continue };
        let word = &code[i + 1..i + 1 + len];
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let before = code[..i].trim_end();
        let after = code[i + 2 + len..].trim_start();
        let made = before.ends_with("Event::new(")
            || before.ends_with("event(")
            // Flood meters make their kind's events; `arp::family` maps arp_* to nd_* for IPv6.
            || before.ends_with("FloodMeter::new(")
            || before.ends_with("FloodMeter::with_window(")
            || (before.ends_with("true) =>") && word.starts_with("nd_"))
            || (before.ends_with('(') && after.starts_with(", Severity::"))
            || (before.ends_with('(') && after.starts_with(",\n") && after[2..].trim_start().starts_with("Severity::"));
        if made && !out.iter().any(|k| k == word) {
            out.push(word.to_string());
        }
    }
    out
}

#[test]
fn every_event_kind_emitted_is_in_the_catalogue_and_documented() {
    let catalogue = std::fs::read_to_string(root().join("protocol/src/catalogue.rs")).unwrap();
    let list =
        catalogue.split("pub const EVENT_KINDS: &[&str] = &[").nth(1).and_then(|r| r.split("];").next()).unwrap();
    let known: Vec<&str> = list.lines().filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\",")).collect();
    let docs = std::fs::read_to_string(root().join("docs/security.md")).unwrap();
    let mut files = Vec::new();
    sources(&root().join("agent/src"), &mut files);
    sources(&root().join("collector/src"), &mut files);
    let mut found = Vec::new();
    for (file, code) in &files {
        for kind in emitted_kinds(code) {
            found.push((file.clone(), kind));
        }
    }
    for want in [
        "port_scan",
        "host_sweep",
        "syn_flood",
        "nd_spoof",
        "dhcp_starvation",
        "defacement",
        "node_impersonation",
        "new_listener",
    ] {
        assert!(found.iter().any(|(_, k)| k == want), "the reader misses {want}: {found:?}");
    }
    let mut wrong = Vec::new();
    for (file, kind) in &found {
        if !known.contains(&kind.as_str()) {
            wrong.push(format!("{file}: {kind} is not in protocol/src/catalogue.rs EVENT_KINDS"));
        }
    }
    for kind in &known {
        if !docs.contains(&format!("`{kind}`")) {
            wrong.push(format!("{kind} is not in docs/security.md"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The shipped Alertmanager example is valid for Alertmanager itself and
/// groups by tierwatch's incident key (tierwatch has grouped already).
#[test]
fn the_alertmanager_example_is_valid_and_groups_by_incident() -> anyhow::Result<()> {
    tierwatch_tests::require_tool!("amtool");
    let file = root().join("deploy/alertmanager/alertmanager.yml");
    let out = std::process::Command::new("amtool").arg("check-config").arg(&file).output()?;
    anyhow::ensure!(
        out.status.success(),
        "amtool rejects {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let am = std::fs::read_to_string(&file)?;
    let route = am.split("\nroute:\n").nth(1).unwrap_or_default();
    let group_by = route.lines().find_map(|l| l.trim().strip_prefix("group_by:")).map(str::trim);
    assert_eq!(group_by, Some("[incident]"), "the top route groups by incident");
    // Every label a route or inhibition matches on is one tierwatch sets.
    let text = std::fs::read_to_string(root().join("collector/src/alert/notify/alertmanager.rs"))?;
    for m in ["problem=", "severity="] {
        assert!(am.contains(m));
        assert!(text.contains(&format!("\"{}\":", m.trim_end_matches('='))), "tierwatch sets no label {m}");
    }
    Ok(())
}
