//! Times as the APIs and Alertmanager write them.

/// `ms` since the epoch as RFC 3339 (UTC); `None` outside what the format can hold.
pub(crate) fn rfc3339(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_become_utc_rfc3339() {
        assert_eq!(super::rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(super::rfc3339(1_764_547_200_250).as_deref(), Some("2025-12-01T00:00:00.25Z"));
        assert_eq!(super::rfc3339(i64::MAX), None);
    }
}
