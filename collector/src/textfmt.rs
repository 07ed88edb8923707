//! Pieces of the Prometheus text exposition format (version 0.0.4), written
//! as the prometheus crate's encoder writes them, so a scrape can copy
//! label sets rendered ahead of time (store.rs renders each series' once,
//! when it first arrives) instead of building and encoding objects.

use std::io::{self, Write};

/// Appends `v` escaped as the format wants: `\` and newline always, `"` in
/// label values.
pub(crate) fn escape_into(out: &mut String, v: &str, quote: bool) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// The label set `{a="x",b="y"}` of `pairs` sorted by name (stable: the
/// names are unique, identity labels being reserved); empty for no labels.
pub(crate) fn label_set(pairs: &mut [(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(pairs.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() + 1);
    for (i, (name, value)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(name);
        out.push_str("=\"");
        escape_into(&mut out, value, true);
        out.push('"');
    }
    out.push('}');
    out
}

/// Writes a family's `# HELP` (when there is one) and `# TYPE` lines.
pub(crate) fn header(w: &mut impl Write, name: &str, help: &str, counter: bool) -> io::Result<()> {
    if !help.is_empty() {
        let mut escaped = String::with_capacity(help.len());
        escape_into(&mut escaped, help, false);
        writeln!(w, "# HELP {name} {escaped}")?;
    }
    writeln!(w, "# TYPE {name} {}", if counter { "counter" } else { "gauge" })
}

/// Writes one sample line: `name{labels} value`.
pub(crate) fn sample(w: &mut impl Write, name: &str, labels: &str, value: f64) -> io::Result<()> {
    w.write_all(name.as_bytes())?;
    w.write_all(labels.as_bytes())?;
    // Rust's shortest round-trip form, as the prometheus crate writes it
    // (`NaN`, `inf` parse in Prometheus too).
    writeln!(w, " {value}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
    use prometheus::Encoder;

    /// What the prometheus crate writes for one gauge family.
    fn reference(name: &str, help: &str, labels: &[(&str, &str)], value: f64) -> String {
        let mut mf = MetricFamily::default();
        mf.set_name(name.into());
        mf.set_help(help.into());
        mf.set_field_type(MetricType::GAUGE);
        let mut m = Metric::default();
        let mut pairs: Vec<LabelPair> = labels
            .iter()
            .map(|(n, v)| {
                let mut l = LabelPair::default();
                l.set_name(n.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect();
        pairs.sort_by(|a, b| a.get_name().cmp(b.get_name()));
        m.set_label(pairs);
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        mf.mut_metric().push(m);
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&[mf], &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn ours(name: &str, help: &str, labels: &[(&str, &str)], value: f64) -> String {
        let mut buf = Vec::new();
        header(&mut buf, name, help, false).unwrap();
        sample(&mut buf, name, &label_set(&mut labels.to_vec()), value).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn lines_are_the_prometheus_encoders() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
        let cases: &[Case<'_>] = &[
            ("back\\slash and\nnewline", &[("target", "gw"), ("node", "c1")], 0.25),
            ("", &[], 1e21),
            ("h", &[("b", "quote \" back \\ nl \n"), ("a", "Xã Mỹ Hoà")], -0.000001),
            ("h", &[("z", "")], f64::NAN),
            ("h", &[("a", "x")], f64::INFINITY),
            ("h", &[("a", "x")], 1234567.0),
        ];
        for (help, labels, value) in cases {
            assert_eq!(ours("tierwatch_x", help, labels, *value), reference("tierwatch_x", help, labels, *value));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_label_value_and_number_render_as_the_encoder_does(
            v in "\\PC{0,24}", w in "[ -~\n\\\\\"]{0,12}", x in proptest::num::f64::ANY,
        ) {
            let labels = [("zeta", v.as_str()), ("alpha", w.as_str())];
            proptest::prop_assert_eq!(ours("tierwatch_x", &w, &labels, x), reference("tierwatch_x", &w, &labels, x));
        }
    }
}
