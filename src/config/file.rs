//! Reading the config file: TOML into [`Settings`], with every unknown key
//! named with its line and the nearest known key.

use std::fmt;
use std::path::Path;

use super::settings::{Settings, FILE_KEYS, FILE_TABLES};
use super::ConfigError;

/// What is wrong with a config file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Keys that are not settings, in the order of their lines.
    #[error("{}", describe_unknown(.0))]
    UnknownKeys(Vec<UnknownKey>),
    /// TOML that does not parse, or a value of the wrong type; with the
    /// line when the parser knows it.
    #[error("{}", match .line { Some(line) => format!("line {line}: {message}"), None => message.clone() })]
    Invalid {
        line: Option<usize>,
        message: String,
    },
}

/// A top-level key the file does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub line: usize,
    pub key: String,
    /// The known key nearest in spelling, if one is close.
    pub suggestion: Option<&'static str>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: `{}`", self.line, self.key)?;
        match self.suggestion {
            Some(known) => write!(f, " (did you mean `{known}`?)"),
            None => Ok(()),
        }
    }
}

const HINT: &str = "keys are the `run` flags in snake_case: max_in_flight, tls_ca, ...";

fn describe_unknown(keys: &[UnknownKey]) -> String {
    match keys {
        [one] => match one.suggestion {
            Some(known) => format!(
                "line {}: unknown key `{}`; did you mean `{known}`?",
                one.line, one.key
            ),
            None => format!("line {}: unknown key `{}` ({HINT})", one.line, one.key),
        },
        several => {
            let named: Vec<String> = several.iter().map(UnknownKey::to_string).collect();
            let hint = if several.iter().any(|key| key.suggestion.is_none()) {
                format!("; {HINT}")
            } else {
                String::new()
            };
            format!("{} unknown keys: {}{hint}", several.len(), named.join(", "))
        }
    }
}

/// Read and parse a TOML config file; unknown keys are named with their line.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parse config text; the error names the line and the key. Every unknown
/// key is named, each with its line and the nearest known key.
pub fn parse_file(text: &str) -> Result<Settings, FileError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    // The top-level keys with their positions, before the typed parse stops
    // at the first unknown one. Syntax errors are left to the typed parse.
    if let Ok(keys) = toml::from_str::<
        std::collections::BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny>,
    >(text)
    {
        let mut unknown: Vec<UnknownKey> = keys
            .keys()
            .filter(|key| {
                let key = key.get_ref().as_str();
                !FILE_KEYS.contains(&key) && !FILE_TABLES.contains(&key)
            })
            .map(|key| UnknownKey {
                line: line_of(key.span().start),
                key: key.get_ref().clone(),
                suggestion: nearest(key.get_ref()),
            })
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable_by(|a, b| (a.line, &a.key).cmp(&(b.line, &b.key)));
            return Err(FileError::UnknownKeys(unknown));
        }
    }
    toml::from_str::<Settings>(text).map_err(|err| FileError::Invalid {
        line: err.span().map(|span| line_of(span.start)),
        message: err.message().trim().to_owned(),
    })
}

/// The known key nearest to `key` (at most three edits away); on a tie,
/// the one in the spelling `key` uses (snake_case or kebab-case).
fn nearest(key: &str) -> Option<&'static str> {
    FILE_KEYS
        .iter()
        .chain(FILE_TABLES)
        .map(|known| (strsim::damerau_levenshtein(key, known), *known))
        .filter(|&(distance, _)| distance <= 3)
        .min_by_key(|&(distance, known)| {
            (distance, known.contains('-') != key.contains('-'), known)
        })
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_named() {
        let err =
            parse_file("manager = \"tcp://h:1\"\nsesions = 4\n[agent]\nca = 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 unknown keys: line 2: `sesions` (did you mean `sessions`?), line 3: `agent`; \
             keys are the `run` flags in snake_case: max_in_flight, tls_ca, ..."
        );
        let FileError::UnknownKeys(keys) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(keys[0].suggestion, Some("sessions"));
        assert_eq!((keys[1].line, keys[1].key.as_str()), (3, "agent"));
        let err = parse_file("tls = 1\ntls-c = 2\n").unwrap_err().to_string();
        assert!(
            err.contains("`tls` (did you mean `tls_ca`?)")
                && err.contains("`tls-c` (did you mean `tls-ca`?)"),
            "{err}"
        );
        let err = parse_file("sessions = \"four\"\n").unwrap_err();
        assert!(err.to_string().starts_with("line 1: "), "{err}");
        assert!(
            matches!(err, FileError::Invalid { line: Some(1), .. }),
            "{err:?}"
        );
        let err = parse_file("sessions = \n").unwrap_err().to_string();
        assert!(err.starts_with("line 1: "), "{err}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse_file("manager = \"tcp://h:1\"\n\nsesions = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("sesions"), "{err}");
        assert_eq!(
            err,
            "line 3: unknown key `sesions`; did you mean `sessions`?"
        );
        let err = parse_file("config = \"other.toml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 1: unknown key `config`"), "{err}");
    }

    #[test]
    fn both_spellings_are_read_but_not_together() {
        let settings = parse_file("max-in-flight = 3\ntls_server_name = \"m\"\n").unwrap();
        assert_eq!(settings.max_in_flight, Some(3));
        assert_eq!(settings.tls_server_name.as_deref(), Some("m"));
        let err = parse_file("max-in-flight = 1\nmax_in_flight = 2\n").unwrap_err();
        assert!(err.to_string().contains("duplicate field"), "{err}");
    }
}
