//! Durations written the Prometheus way in config files: `250ms`, `30s`, `5m`, `1h`, `7d`, or combined `1m30s`.

use std::time::Duration;

/// Parses a duration such as `1m30s`; the error says what is wrong.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number at {rest:?} (e.g. 250ms, 30s, 5m, 1h, 7d)"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("invalid duration {s:?}: number {n} has no unit (ms, s, m, h, d)")),
            other => return Err(format!("invalid duration {s:?}: unknown unit {other:?} (ms, s, m, h, d)")),
        };
        let part = n.checked_mul(ms).ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    Ok(total)
}

/// Formats a duration in the same syntax, largest units first.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// `#[serde(with = "tierwatch_runtime::duration::serde")]` for `Duration` fields.
/// Parsing happens inside the visitor, so serde_yaml locates a bad value at
/// its own line, column and key path, not at the enclosing mapping.
pub mod serde {
    use std::fmt;
    use std::time::Duration;

    struct Visitor;

    impl ::serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 250ms, 30s, 5m, 1h, 7d")
        }
        fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse(v).map_err(E::custom)
        }
    }

    /// Deserializes from a string such as `30s`.
    pub fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Visitor)
    }

    /// Serializes as a string such as `30s`.
    pub fn serialize<S: ::serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }
}

/// `#[serde(default, with = "tierwatch_runtime::duration::serde_opt")]` for `Option<Duration>` fields.
pub mod serde_opt {
    use std::fmt;
    use std::time::Duration;

    struct Visitor;

    impl<'de> ::serde::de::Visitor<'de> for Visitor {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 250ms, 30s, 5m, 1h, 7d, or null")
        }
        fn visit_none<E: ::serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: ::serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: ::serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::serde::deserialize(d).map(Some)
        }
    }

    /// Deserializes `null` or a duration string.
    pub fn deserialize<'de, D: ::serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(Visitor)
    }

    /// Serializes as a duration string or `null`.
    pub fn serialize<S: ::serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format(*d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, ::serde::Deserialize)]
    #[allow(dead_code)]
    struct T {
        #[serde(with = "super::serde")]
        every: Duration,
        #[serde(default, with = "super::serde_opt")]
        maybe: Option<Duration>,
    }

    #[test]
    fn bad_value_is_located_at_the_value() {
        let err = serde_yaml::from_str::<T>("every: 1s\nmaybe: soon\n").unwrap_err();
        let loc = err.location().unwrap();
        assert_eq!((loc.line(), loc.column()), (2, 8), "{err}");
        assert!(err.to_string().starts_with("maybe: invalid duration"), "{err}");
        let ok = serde_yaml::from_str::<T>("every: 1m\n").unwrap();
        assert_eq!((ok.every, ok.maybe), (Duration::from_secs(60), None));
        let ok = serde_yaml::from_str::<T>("every: 1m\nmaybe: 5s\n").unwrap();
        assert_eq!(ok.maybe, Some(Duration::from_secs(5)));
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("5min").unwrap_err().contains("unknown unit \"min\""));
        assert!(parse("").is_err());
        assert!(parse("s").unwrap_err().contains("expected a number"));
    }

    proptest! {
        #[test]
        fn format_parse_roundtrip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,16}") {
            let _ = parse(&s);
        }
    }
}
