//! Typed YAML configuration: parse straight into `serde` structs, then run a
//! semantic validation that reports every problem at once. Every problem
//! names the file, line, column and key path (`nodes[2].parent`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod locate;
mod repair;

use std::fmt;
use std::path::{Path, PathBuf};

pub use locate::locate;
use serde::de::DeserializeOwned;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Key path such as `targets[3].port`; empty for the document itself.
    pub path: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(col) = p.column {
                    write!(f, ":{col}")?;
                }
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(file: &Path, problem: Problem) -> Self {
        ConfigError { file: file.to_path_buf(), problems: vec![problem] }
    }
}

/// Semantic problems found after parsing, collected rather than returned
/// one at a time; they start with the file's type errors when it was read
/// with [`load_all`] or [`parse_all`].
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>, TypeErrors);

/// Type errors found by [`parse_all`], and what was removed to find them.
#[derive(Debug, Default)]
struct TypeErrors {
    located: Vec<Problem>,
    removed: repair::Removed,
}

impl Problems {
    /// Records that the value at `path` is wrong because of `message`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }

    /// True when nothing was recorded (type errors included).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.located.is_empty()
    }

    /// How many problems were recorded (type errors included).
    pub fn len(&self) -> usize {
        self.0.len() + self.1.located.len()
    }

    /// The problems as `(key path, message)`, for callers without a file (an API body).
    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }

    /// `value` when no problem was recorded; otherwise the problems as
    /// [`Problems::into_result`]. A value that is missing although nothing
    /// was recorded is reported at `path`.
    pub fn into_value<T>(mut self, file: &Path, text: &str, path: &str, value: Option<T>) -> Result<T, ConfigError> {
        const MISSING: &str = "could not be loaded";
        if value.is_none() && self.is_empty() {
            self.push(path, MISSING);
        }
        self.into_result(file, text)?;
        value.ok_or_else(|| {
            let problem = Problem { line: None, column: None, path: path.into(), message: MISSING.into() };
            ConfigError::single(file, problem)
        })
    }

    /// Turns the recorded problems into an error located in `text`, or `Ok` when none.
    /// Semantic problems inside something a type error removed are its
    /// consequences and left out; the rest name the keys and list positions
    /// of the file as written.
    pub fn into_result(self, file: &Path, text: &str) -> Result<(), ConfigError> {
        if self.is_empty() {
            return Ok(());
        }
        let Problems(semantic, TypeErrors { mut located, removed }) = self;
        for (path, message) in semantic {
            let path = removed.original(&path);
            if removed.covers(&path) {
                continue;
            }
            let (line, column) = match locate(text, &path) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            located.push(Problem { line, column, path, message });
        }
        if located.is_empty() {
            return Ok(());
        }
        Err(ConfigError { file: file.to_path_buf(), problems: located })
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (path, message)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{path}: {message}")?;
        }
        Ok(())
    }
}

/// Parses YAML `text` (read from `file`, named in errors) into `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError::single(file, problem_from_yaml(&e)))
}

/// Parses `text` into `T` reporting every type error, not only the first:
/// after each, the offending key or list element is taken out and the rest
/// parsed again. When what is left parses, it is returned with the type
/// errors already recorded in the [`Problems`], so the caller's semantic
/// validation adds its own and every problem of the file is reported at
/// once; when it cannot be repaired (a syntax error, a required section
/// missing) the type errors found are the error.
pub fn parse_all<T: DeserializeOwned>(file: &Path, text: &str) -> Result<(T, Problems), ConfigError> {
    let (value, found, removed) = repair::parse_all::<T>(text);
    let located: Vec<Problem> = found
        .into_iter()
        .map(|f| {
            let (line, column) = match f.location.or_else(|| locate(text, &f.original_path)) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            Problem { line, column, path: f.original_path, message: f.message }
        })
        .collect();
    match value {
        Some(v) => Ok((v, Problems(Vec::new(), TypeErrors { located, removed }))),
        None => Err(ConfigError { file: file.to_path_buf(), problems: located }),
    }
}

/// Reads `file` and parses it with [`parse_all`]; returns the text too (for locating later problems).
pub fn load_all<T: DeserializeOwned>(file: &Path) -> Result<(T, String, Problems), ConfigError> {
    let text = read(file)?;
    let (value, problems) = parse_all(file, &text)?;
    Ok((value, text, problems))
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigError::single(
            file,
            Problem { line: None, column: None, path: String::new(), message: format!("cannot read: {e}") },
        )
    })
}

/// Reads and parses `file`; returns the value and the text (for locating later problems).
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<(T, String), ConfigError> {
    let text = read(file)?;
    let value = parse(file, &text)?;
    Ok((value, text))
}

fn problem_from_yaml(e: &serde_yaml::Error) -> Problem {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(loc) => {
            // serde_yaml appends " at line L column C"; the location goes in front instead.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
            (Some(loc.line()), Some(loc.column()))
        }
        None => (None, None),
    };
    // serde_yaml prefixes the key path as "a.b[1].c: message".
    let mut path = String::new();
    if let Some((head, rest)) = message.split_once(": ") {
        let looks_like_path =
            !head.is_empty() && head.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'));
        if looks_like_path {
            path = head.to_string();
            message = rest.to_string();
        }
    }
    Problem { line, column, path, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        port: u16,
    }

    #[test]
    fn parse_error_names_line_column_and_path() {
        let text = "name: x\nitems:\n  - id: a\n    port: 80\n  - id: b\n    port: 99999\n";
        let err = parse::<Conf>(Path::new("agent.yaml"), text).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.path, "items[1].port");
        assert_eq!(p.line, Some(6));
        assert!(err.to_string().starts_with("agent.yaml:6:"), "{err}");
        assert!(err.to_string().contains("items[1].port: invalid value"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = "name: x\nitems:\n  - id: a\n    prot: 80\n";
        let err = parse::<Conf>(Path::new("c.yaml"), text).unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("c.yaml:4:"), "{s}");
        assert!(s.contains("items[0]") && s.contains("unknown field `prot`"), "{s}");
    }

    #[test]
    fn semantic_problems_are_all_reported_with_locations() {
        let text = "name: x\nitems:\n  - id: a\n    port: 80\n  - id: a\n    port: 0\n";
        let mut p = Problems::default();
        p.push("items[1].id", "duplicate id \"a\"");
        p.push("items[1].port", "port 0 is not allowed");
        let err = p.into_result(Path::new("c.yaml"), text).unwrap_err();
        let s = err.to_string();
        assert_eq!(s, "c.yaml:5:5: items[1].id: duplicate id \"a\"\nc.yaml:6:5: items[1].port: port 0 is not allowed");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let err = load::<Conf>(Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(err.to_string().contains("cannot read"));
    }
}
