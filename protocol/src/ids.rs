//! Node identifiers: the one spelling of a node used in certificates, topology and labels.

use std::fmt;

/// A node identifier: lower-case ASCII letters, digits and `-`, 1..=63 bytes,
/// starting with a letter or digit, so it is a valid DNS label (it goes in
/// the certificate's SAN as `DNS:ID`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id {0:?} is longer than 63 bytes")]
    TooLong(String),
    #[error("node id {0:?} must start with a lower-case letter or digit")]
    BadStart(String),
    #[error("node id {0:?} may contain only a-z, 0-9 and '-' (found {1:?})")]
    BadChar(String, char),
    #[error("node id {0:?} must not end with '-'")]
    BadEnd(String),
}

impl NodeId {
    /// Checks `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, NodeIdError> {
        if s.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if s.len() > 63 {
            return Err(NodeIdError::TooLong(s.to_string()));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NodeIdError::BadStart(s.to_string()));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(NodeIdError::BadChar(s.to_string(), c));
        }
        if s.ends_with('-') {
            return Err(NodeIdError::BadEnd(s.to_string()));
        }
        Ok(NodeId(s.to_string()))
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Looked up by its string (maps keyed by node answer `&str` lookups
/// without allocating): hashes and compares as the string it holds.
impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Lower-case hex of `bytes`, how boot ids appear in logs and APIs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_commune_ids() {
        for ok in ["nui-cam", "giang-thanh", "an-giang", "x1", "0"] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert!(matches!(NodeId::new("Núi"), Err(NodeIdError::BadStart(_))));
        assert!(matches!(NodeId::new("nui cam"), Err(NodeIdError::BadChar(_, ' '))));
        assert!(matches!(NodeId::new("nui-"), Err(NodeIdError::BadEnd(_))));
        assert!(matches!(NodeId::new("-nui"), Err(NodeIdError::BadStart(_))));
        assert!(matches!(NodeId::new(&"a".repeat(64)), Err(NodeIdError::TooLong(_))));
    }
}
