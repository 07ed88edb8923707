//! `{{ key }}` templates: rule summaries and the texts of each language.
//! Below both alerting and `i18n`, so either can fill a text without
//! importing the other.

/// Replaces `{{ key }}` in `template` by `vars(key)`; `{{ key | percent }}`,
/// `| ms` and `| days` format numbers. Unknown keys are left visible.
pub(crate) fn render(template: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    render_in(template, vars, "days")
}

/// [`render`] with `days_word` after `| days` numbers (the language's word).
pub(crate) fn render_in(template: &str, vars: &dyn Fn(&str) -> Option<String>, days_word: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + end].trim();
        let (key, filter) = match inner.split_once('|') {
            Some((k, f)) => (k.trim(), Some(f.trim())),
            None => (inner, None),
        };
        let value = vars(key);
        let text = match (value, filter) {
            (None, _) => format!("{{{{{inner}}}}}"),
            (Some(v), None) => v,
            (Some(v), Some(f)) => match (v.parse::<f64>(), f) {
                (Ok(n), "percent") => format!("{:.1}%", n * 100.0),
                (Ok(n), "ms") => format!("{:.1} ms", n * 1000.0),
                (Ok(n), "days") => format!("{:.1} {days_word}", n / 86400.0),
                _ => v,
            },
        };
        out.push_str(&text);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render() {
        let vars = |k: &str| match k {
            "node_name" => Some("Xã Núi Cấm".to_string()),
            "value" => Some("0.25".to_string()),
            _ => None,
        };
        assert_eq!(
            render("loss {{ value | percent }} at {{node_name}} {{ nope }}", &vars),
            "loss 25.0% at Xã Núi Cấm {{nope}}"
        );
        assert_eq!(render("unclosed {{ x", &vars), "unclosed {{ x");
    }
}
