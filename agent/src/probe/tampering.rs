//! Integrity of a public service beyond its page (defacement is in
//! `deface.rs`): a certificate that stops being trusted or is replaced by
//! one from another issuer (an intercepting proxy, a hijacked domain that
//! got itself a certificate), a DNS answer with an address outside the
//! expected set (a hijacked record). Each becomes a security event with the
//! evidence when it starts or changes; the probe's metrics carry the state
//! in between, so a long outage is one event, not one per round.

use std::collections::{BTreeSet, VecDeque};

use tierwatch_protocol::{Event, Severity};

use super::tls::{TlsFacts, VerifyFailure};

/// Trusted certificates remembered per target: a service behind a load
/// balancer may show a few, alternating, and that is no change.
const KNOWN: usize = 8;
/// An untrusted certificate is said again after this, while it lasts.
const REPEAT_MS: i64 = 6 * 3_600_000;

/// The certificates of one TLS-speaking target, round after round.
#[derive(Debug, Default)]
pub struct CertWatch {
    /// Trusted (fingerprint, issuer), newest last.
    trusted: VecDeque<(String, Option<String>)>,
    /// Untrusted (fingerprint, why) reported, and when.
    reported: VecDeque<(String, &'static str, i64)>,
}

impl CertWatch {
    /// Judges the certificate `target` presented; an event when an
    /// untrusted one appears (or another reason or another certificate), or
    /// a trusted one never seen before replaces the known ones.
    pub fn check(&mut self, facts: &TlsFacts, target: &str, now_ms: i64) -> Option<Event> {
        let failure = match &facts.verify {
            Err((why, _)) => Some(why.as_str()),
            Ok(()) if !facts.host_match => Some(VerifyFailure::WrongHost.as_str()),
            Ok(()) => None,
        };
        let fingerprint = &facts.leaf_sha256;
        let mut attrs = vec![
            ("src", target.to_string()),
            ("target", target.to_string()),
            ("fingerprint", fingerprint.clone()),
            ("issuer", facts.leaf_issuer.clone().unwrap_or_default()),
        ];
        let newest = self.trusted.back().cloned();
        if let Some((fp, issuer)) = &newest {
            if fp != fingerprint {
                attrs.push(("previous_fingerprint", fp.clone()));
                attrs.push(("previous_issuer", issuer.clone().unwrap_or_default()));
            }
        }
        if let Some(why) = failure {
            self.reported.retain(|(_, _, t)| now_ms - t < REPEAT_MS);
            if self.reported.iter().any(|(fp, w, _)| fp == fingerprint && *w == why) {
                return None;
            }
            if self.reported.len() >= KNOWN {
                self.reported.pop_front();
            }
            self.reported.push_back((fingerprint.clone(), why, now_ms));
            // Expiry has its own rules (14 and 3 days ahead); a certificate
            // for another name, from an unknown issuer or not valid yet is
            // what an interception looks like.
            let severity = if why == "expired" { Severity::Info } else { Severity::Critical };
            let detail = match &facts.verify {
                Err((_, words)) => words.clone(),
                Ok(()) => "the certificate is not valid for this host name".into(),
            };
            attrs.push(("why", why.to_string()));
            attrs.push(("detail", detail.chars().take(300).collect()));
            return Some(Event::new("certificate_invalid", severity, now_ms, attrs));
        }
        if self.trusted.iter().any(|(fp, _)| fp == fingerprint) {
            return None;
        }
        if self.trusted.len() >= KNOWN {
            self.trusted.pop_front();
        }
        self.trusted.push_back((fingerprint.clone(), facts.leaf_issuer.clone()));
        // The first trusted one is the baseline. Renewal by the same issuer
        // is routine and listed; another issuer is worth a look.
        let (_, issuer) = newest?;
        let (kind, severity) = if issuer == facts.leaf_issuer {
            ("certificate_renewed", Severity::Info)
        } else {
            ("certificate_changed", Severity::Warning)
        };
        Some(Event::new(kind, severity, now_ms, attrs))
    }
}

/// The answers of one DNS target, round after round.
#[derive(Debug, Default)]
pub struct DnsWatch {
    /// Unexpected answer sets reported since the answers were last right
    /// (a few: a hijacked round-robin record alternates).
    reported: Vec<BTreeSet<String>>,
}

impl DnsWatch {
    /// Judges a successful (NOERROR) answer against the expected set: an
    /// event when an answer outside it appears, or the answers change again.
    /// Missing answers alone are an outage, not tampering: the metrics have it.
    pub fn check(
        &mut self,
        answers: &BTreeSet<String>,
        expected: &BTreeSet<String>,
        target: &str,
        query: &str,
        server: &str,
        now_ms: i64,
    ) -> Option<Event> {
        let unexpected: Vec<&str> = answers.difference(expected).map(String::as_str).collect();
        if unexpected.is_empty() {
            self.reported.clear();
            return None;
        }
        if self.reported.contains(answers) {
            return None;
        }
        if self.reported.len() >= KNOWN {
            self.reported.remove(0);
        }
        self.reported.push(answers.clone());
        let join = |s: &BTreeSet<String>| s.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        Some(Event::new(
            "dns_mismatch",
            Severity::Critical,
            now_ms,
            vec![
                ("src", target.to_string()),
                ("target", target.to_string()),
                ("query", query.to_string()),
                ("server", server.to_string()),
                ("answers", join(answers)),
                ("expected", join(expected)),
                ("unexpected", unexpected.join(",")),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts(fp: &str, issuer: &str, verify: Result<(), VerifyFailure>, host_match: bool) -> TlsFacts {
        TlsFacts {
            verify: verify.map_err(|w| (w, format!("invalid peer certificate: {}", w.as_str()))),
            host_match,
            leaf_not_after: None,
            chain_not_after: None,
            version: Some("TLSv1.3"),
            handshake: Duration::from_millis(3),
            leaf_sha256: fp.into(),
            leaf_issuer: Some(issuer.into()),
        }
    }

    fn kind(e: Option<Event>) -> Option<(String, i32)> {
        e.map(|e| (e.kind, e.severity))
    }

    #[test]
    fn certificates_untrusted_replaced_and_renewed() {
        let mut w = CertWatch::default();
        let ca = "CN=Tinh An Giang CA";
        assert!(
            w.check(&facts("aa", ca, Ok(()), true), "portal", 0).is_none(),
            "the first trusted one is the baseline"
        );
        assert!(w.check(&facts("aa", ca, Ok(()), true), "portal", 1).is_none());
        // An intercepting proxy: unknown issuer, critical, with the evidence.
        let e = w.check(&facts("ee", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 2).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("certificate_invalid", Severity::Critical as i32));
        assert_eq!(e.attributes["why"], "unknown_issuer");
        assert_eq!((e.attributes["issuer"].as_str(), e.attributes["previous_issuer"].as_str()), ("CN=Evil", ca));
        assert_eq!(e.attributes["previous_fingerprint"], "aa");
        assert!(w.check(&facts("ee", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 3).is_none());
        // Another untrusted certificate is said again.
        let again = w.check(&facts("ff", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true), "portal", 4);
        assert_eq!(kind(again), Some(("certificate_invalid".into(), 3)));
        // Trusted again (known), then renewed by the same CA: listed; another CA: a warning.
        assert!(w.check(&facts("aa", ca, Ok(()), true), "portal", 5).is_none());
        assert_eq!(kind(w.check(&facts("bb", ca, Ok(()), true), "portal", 6)), Some(("certificate_renewed".into(), 1)));
        let other = w.check(&facts("cc", "CN=Other CA", Ok(()), true), "portal", 7);
        assert_eq!(kind(other), Some(("certificate_changed".into(), 2)));
        // A chain that verifies but names another host; an expired one is only listed.
        assert_eq!(
            kind(w.check(&facts("cc", "CN=Other CA", Ok(()), false), "portal", 8)),
            Some(("certificate_invalid".into(), 3))
        );
        // Behind a load balancer, known certificates alternating are no change.
        for (i, fp) in ["aa", "bb", "cc", "aa", "bb"].into_iter().enumerate() {
            let issuer = if fp == "cc" { "CN=Other CA" } else { ca };
            assert!(w.check(&facts(fp, issuer, Ok(()), true), "portal", 9 + i as i64).is_none(), "{fp}");
        }
        // An untrusted one lasting is said again after hours, not every round.
        let evil = facts("ee", "CN=Evil", Err(VerifyFailure::UnknownIssuer), true);
        assert!(w.check(&evil, "portal", 100).is_none(), "reported at 2");
        assert!(w.check(&evil, "portal", REPEAT_MS + 3).is_some(), "again after REPEAT_MS");
        let mut w = CertWatch::default();
        let expired = w.check(&facts("aa", ca, Err(VerifyFailure::Expired), true), "portal", 0).unwrap();
        assert_eq!((expired.severity, expired.attributes["why"].as_str()), (Severity::Info as i32, "expired"));
    }

    #[test]
    fn dns_answers_outside_the_expected_set() {
        let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<String>>();
        let expected = set(&["10.1.0.80", "10.1.0.81"]);
        let mut w = DnsWatch::default();
        assert!(
            w.check(&set(&["10.1.0.80"]), &expected, "dns", "portal", "10.1.0.53", 0).is_none(),
            "a subset is an outage"
        );
        let e = w.check(&set(&["10.1.0.80", "203.0.113.66"]), &expected, "dns", "portal", "10.1.0.53", 1).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("dns_mismatch", Severity::Critical as i32));
        assert_eq!(e.attributes["unexpected"], "203.0.113.66");
        assert_eq!(e.attributes["answers"], "10.1.0.80,203.0.113.66");
        assert_eq!(e.attributes["expected"], "10.1.0.80,10.1.0.81");
        assert!(w.check(&set(&["10.1.0.80", "203.0.113.66"]), &expected, "dns", "portal", "s", 2).is_none(), "once");
        assert!(w.check(&set(&["203.0.113.67"]), &expected, "dns", "portal", "s", 3).is_some(), "changed again");
        let back = w.check(&set(&["10.1.0.80", "203.0.113.66"]), &expected, "dns", "portal", "s", 3);
        assert!(back.is_none(), "alternating bad answers are said once each");
        assert!(w.check(&expected, &expected, "dns", "portal", "s", 4).is_none());
        assert!(w.check(&set(&["203.0.113.67"]), &expected, "dns", "portal", "s", 5).is_some(), "back after a fix");
    }
}
