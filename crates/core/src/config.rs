//! Configuration helpers shared by every connector config.
//!
//! - [`load_yaml`]: parses a YAML pipeline file into typed structs (which use
//!   `#[serde(deny_unknown_fields)]`) and reports errors as `file:line:column: message`, with
//!   the offending line shown, even for keys inside tagged connector enums.
//! - [`VarStr`]: a string that may hold `${ENV_VAR}` or `${file:/path}` templates, kept as
//!   written in the parsed config and resolved only when a connector is built, so that config
//!   dumps and `Debug` output never contain secrets. [`VarStr::resolve_secret`] returns a
//!   [`SecretString`] for passwords and tokens.
//! - [`duration`]: human durations (`500ms`, `30s`, `5m`) for serde's `with` attribute.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the pipeline file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the expected structure.
    #[error("{path}:{line}:{column}: {message}\n{excerpt}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
        /// The offending line, with a caret under the column.
        excerpt: String,
    },
    /// A `${...}` template could not be resolved.
    #[error("{field}: {message}")]
    Template {
        /// The config key holding the template.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable (found by a connector's `validate`).
    #[error("{field}: {message}")]
    Value {
        /// The config key.
        field: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

/// Parses YAML `text` (read from `path`, used in messages) into `T`.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|err| {
        let (mut line, mut column) = err
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        let message = strip_location_prefix(&err.without_snippet().to_string());
        if let Some(key) = unknown_field_name(&message) {
            if let Some((l, c)) = find_key_below(text, line, key) {
                (line, column) = (l, c);
            }
        }
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            excerpt: excerpt(text, line, column),
            message,
        }
    })
}

/// Reads and parses a YAML file into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(path, &text)
}

fn strip_location_prefix(message: &str) -> String {
    let mut m = message.trim();
    m = m.strip_prefix("error: ").unwrap_or(m);
    if m.starts_with("line ") {
        if let Some((_, rest)) = m.split_once(": ") {
            m = rest;
        }
    }
    m.to_string()
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Serde reports unknown keys inside internally tagged enums at the enclosing map's key (it
/// buffers the map to find the tag). Look inside that block for the key itself.
fn find_key_below(text: &str, reported_line: usize, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.get(reported_line.checked_sub(1)?)?;
    let base = indentation(header);
    let own_line_key = |line: &str| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    if own_line_key(header) {
        return Some((reported_line, base + 1));
    }
    for (i, line) in lines.iter().enumerate().skip(reported_line) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indentation(line) <= base {
            break;
        }
        if own_line_key(line) {
            let column = line.find(key).unwrap_or(0) + 1;
            return Some((i + 1, column));
        }
    }
    None
}

fn excerpt(text: &str, line: usize, column: usize) -> String {
    let Some(src) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let gutter = format!("{line} | ");
    format!(
        "{gutter}{src}\n{}^",
        " ".repeat(gutter.len() + column.saturating_sub(1))
    )
}

/// A config string that may contain `${ENV_VAR}` and `${file:/path/to/secret}` templates.
///
/// It keeps the template as written; [`VarStr::resolve`] substitutes at build time. `$$` is a
/// literal `$`. `Debug` and `Display` show the template, never the resolved value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VarStr(String);

impl VarStr {
    /// A template from text.
    pub fn new(template: impl Into<String>) -> Self {
        VarStr(template.into())
    }

    /// The template as written.
    pub fn template(&self) -> &str {
        &self.0
    }

    /// Substitutes templates. `field` names the config key for error messages.
    pub fn resolve(&self, field: &str) -> Result<String, ConfigError> {
        let err = |message: String| ConfigError::Template {
            field: field.to_string(),
            message,
        };
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| err(format!("unclosed `${{` in {:?}", self.0)))?;
                let name = &after[..end];
                if let Some(file) = name.strip_prefix("file:") {
                    let content = std::fs::read_to_string(file)
                        .map_err(|e| err(format!("cannot read ${{file:{file}}}: {e}")))?;
                    out.push_str(content.trim_end_matches(['\n', '\r']));
                } else {
                    let value = std::env::var(name).map_err(|_| {
                        err(format!(
                            "environment variable {name} is not set (export it, or use ${{file:PATH}})"
                        ))
                    })?;
                    out.push_str(&value);
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Substitutes templates into a secret that redacts itself in `Debug`.
    pub fn resolve_secret(&self, field: &str) -> Result<SecretString, ConfigError> {
        self.resolve(field).map(SecretString::from)
    }
}

impl fmt::Debug for VarStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for VarStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for VarStr {
    fn from(s: &str) -> Self {
        VarStr::new(s)
    }
}

/// A time as RFC 3339 in UTC, to the second (for `state show` and reports).
pub fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses a human duration (`250ms`, `30s`, `5m`, `1h 30m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. 500ms, 30s, 5m)"))
}

/// Serde helpers for human durations: `250ms`, `30s`, `5m`, `1h 30m`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a human duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (write e.g. 500ms, 30s, 5m)"
            ))
        })
    }

    /// Writes a human duration.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

/// Parses a byte size: a number of bytes (`1048576`) or a number with a unit (`512KiB`,
/// `128MiB`, `1GiB`; `KB`/`MB`/`GB` are powers of 1000; case and spaces do not matter).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (write e.g. 64MiB, 1GB, 4096)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (write e.g. 64MiB, 1GB, 4096)"))?;
    Ok((value * factor as f64).round() as u64)
}

/// Serde helpers for an optional, non-zero byte size written as a number or `128MiB`.
pub mod byte_size_option {
    use std::num::NonZeroU64;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    /// Parses a size; `0` is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroU64>, D::Error> {
        let bytes = match Option::<Raw>::deserialize(d)? {
            None => return Ok(None),
            Some(Raw::Number(n)) => n,
            Some(Raw::Text(t)) => super::parse_byte_size(&t).map_err(serde::de::Error::custom)?,
        };
        NonZeroU64::new(bytes)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("a size must be larger than 0"))
    }

    /// Writes the size in bytes.
    pub fn serialize<S: Serializer>(value: &Option<NonZeroU64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_u64(v.get()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Csv {
        #[allow(dead_code)]
        path: VarStr,
        #[allow(dead_code)]
        delimiter: Option<char>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Source {
        Csv(#[allow(dead_code)] Csv),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pipeline {
        #[allow(dead_code)]
        pipeline: String,
        #[allow(dead_code)]
        source: Source,
        #[serde(default, with = "duration")]
        commit_interval: Duration,
    }

    #[test]
    fn byte_sizes_take_units() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_byte_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_byte_size("64kib"), Ok(64 << 10));
        assert!(parse_byte_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_byte_size("MiB").is_err());
    }

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        parse_yaml(Path::new("p.yaml"), text)
    }

    fn location(err: ConfigError) -> (usize, usize, String) {
        match err {
            ConfigError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unknown_key_inside_a_tagged_enum_reports_its_own_line() {
        let text =
            "pipeline: a\nsource:\n  kind: csv\n  # comment\n  path: x.csv\n  dleimiter: ';'\n";
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        let (line, column, message) = location(err);
        assert_eq!((line, column), (6, 3), "{message}");
        assert!(
            message.starts_with("unknown field `dleimiter`"),
            "{message}"
        );
        assert!(
            message.contains("delimiter"),
            "suggests the known keys: {message}"
        );
        assert!(shown.starts_with("p.yaml:6:3: unknown field"), "{shown}");
        assert!(shown.contains("6 |   dleimiter: ';'"), "{shown}");
    }

    #[test]
    fn top_level_unknown_key_and_bad_values_report_lines() {
        let (line, _, message) = location(parse("pipeline: a\nsourc: 1\n").unwrap_err());
        assert_eq!(line, 2);
        assert!(message.contains("unknown field `sourc`"), "{message}");

        let text = "pipeline: a\ncommit_interval: soon\nsource:\n  kind: csv\n  path: x\n";
        let (line, _, message) = location(parse(text).unwrap_err());
        assert_eq!(line, 2);
        assert!(message.contains("invalid duration \"soon\""), "{message}");

        let text = "pipeline: a\nsource:\n  kind: tsv\n  path: x\n";
        let (line, _, message) = location(parse(text).unwrap_err());
        assert_eq!(line, 3);
        assert!(message.contains("unknown variant `tsv`"), "{message}");
    }

    #[test]
    fn a_valid_file_parses() {
        let p =
            parse("pipeline: a\ncommit_interval: 2m\nsource:\n  kind: csv\n  path: x\n").unwrap();
        assert_eq!(p.commit_interval, Duration::from_secs(120));
    }

    #[test]
    fn templates_resolve_env_and_files_and_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "hunter2\n").unwrap();
        std::env::set_var("TRIBUTARY_TEST_HOST", "db.local");
        let v = VarStr::new(format!(
            "postgres://u:${{file:{}}}@${{TRIBUTARY_TEST_HOST}}/x?cost=$$5",
            secret.display()
        ));
        assert_eq!(
            v.resolve("sink.url").unwrap(),
            "postgres://u:hunter2@db.local/x?cost=$5"
        );
        assert!(
            !format!("{v:?}").contains("hunter2"),
            "Debug shows the template only"
        );

        let missing = VarStr::new("${TRIBUTARY_TEST_SURELY_UNSET}").resolve("sink.password");
        let msg = missing.unwrap_err().to_string();
        assert!(
            msg.starts_with(
                "sink.password: environment variable TRIBUTARY_TEST_SURELY_UNSET is not set"
            ),
            "{msg}"
        );
    }
}
