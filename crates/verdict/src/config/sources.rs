//! Where each configuration value comes from: the keys there are, keys
//! refused in the file, `VERDICT_*` variables that are not keys, and the
//! report `verdict config` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;

use super::{Config, ConfigError, Overrides};

/// `VERDICT_*` variables read by tools and tests, not by the
/// configuration: never warned about.
pub const TOOL_VARIABLES: &[&str] = &[
    "CONFIG",
    "LOG_FORMAT",
    "TEST_DATABASE_URL",
    "TEST_SEED",
    "SIM_SEED",
    "SIM_SEEDS",
    "SIM_STEPS",
    "PRESENCE_SEED",
];

/// Keys whose values are secrets: `verdict config` shows only whether
/// they are set.
pub const SECRET_KEYS: &[&str] = &[
    "jwt_secret",
    "stripe_secret_key",
    "webhook_secret",
    "livekit_api_secret",
    "daily_webhook_secret",
    "twilio_auth_token",
];

/// Keys holding URLs that may carry a password (`user:password@`).
const URL_KEYS: &[&str] = &["database_url", "smtp_url"];

/// Every key `verdict.toml` may hold (and `VERDICT_<KEY>` may set).
pub fn keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Where one value was decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Origin {
    Default,
    File { path: PathBuf },
    Environment { variable: String },
    Flag,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path } => write!(f, "file {}", path.display()),
            Origin::Environment { variable } => write!(f, "environment {variable}"),
            Origin::Flag => f.write_str("command line"),
        }
    }
}

/// The configuration with the origin of each key and the variables that
/// were ignored.
#[derive(Debug)]
pub struct Explained {
    pub config: Config,
    pub origins: BTreeMap<String, Origin>,
    /// `VERDICT_*` variables that are neither keys nor tools' own.
    pub unknown_variables: Vec<String>,
}

/// Loads the layers (defaults, `file` if it exists, `VERDICT_*`, flags),
/// refusing a key of the file that is not a key of the configuration.
pub fn load(file: &Path, overrides: &Overrides) -> Result<Explained, ConfigError> {
    let known = keys();
    let in_file = file_keys(file)?;
    if let Some(unknown) = in_file.iter().find(|key| !known.contains(key)) {
        let hint = closest(unknown, &known)
            .map(|key| format!(" (did you mean `{key}`?)"))
            .unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "{}: unknown key `{unknown}`{hint}; the keys are listed in verdict.example.toml",
            file.display()
        )));
    }
    let variables: BTreeSet<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| name.strip_prefix("VERDICT_").map(str::to_owned))
        .collect();
    let unknown_variables = variables
        .iter()
        .filter(|name| {
            !known.contains(&name.to_ascii_lowercase()) && !TOOL_VARIABLES.contains(&name.as_str())
        })
        .map(|name| format!("VERDICT_{name}"))
        .collect();
    let environment = {
        let known = known.clone();
        Env::prefixed("VERDICT_")
            .filter(move |key| known.iter().any(|name| key.as_str().eq_ignore_ascii_case(name)))
    };
    let mut layers = Figment::from(Serialized::defaults(Config::default()));
    // Exactly this file, if it exists: `Toml::file` would also search the
    // parent folders for one of its name.
    if file.exists() {
        layers = layers.merge(Toml::file_exact(file));
    }
    let config = layers
        .merge(environment)
        .merge(Serialized::defaults(overrides))
        .extract::<Config>()
        .map_err(|error| ConfigError::Load(Box::new(error)))?;
    let flags = match serde_json::to_value(overrides) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    let origins = known
        .iter()
        .map(|key| {
            let variable = format!("VERDICT_{}", key.to_ascii_uppercase());
            let origin = if flags.contains(key) {
                Origin::Flag
            } else if variables.contains(&key.to_ascii_uppercase()) {
                Origin::Environment { variable }
            } else if in_file.contains(key) {
                Origin::File { path: file.to_owned() }
            } else {
                Origin::Default
            };
            (key.clone(), origin)
        })
        .collect();
    Ok(Explained { config, origins, unknown_variables })
}

/// The top-level keys of the file (none when it does not exist).
fn file_keys(file: &Path) -> Result<BTreeSet<String>, ConfigError> {
    if !file.exists() {
        return Ok(BTreeSet::new());
    }
    let data = figment::Provider::data(&Toml::file_exact(file)).map_err(|error| {
        ConfigError::Invalid(format!(
            "{}: {}",
            file.display(),
            without_source_lines(&error.to_string())
        ))
    })?;
    Ok(data.into_values().flat_map(|dict| dict.into_keys()).collect())
}

/// A TOML parser's message without the lines of the file it quotes (the
/// line may hold a secret): where, and what is wrong.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with('|')
                && !line.split_once('|').is_some_and(|(number, _)| {
                    !number.trim().is_empty() && number.trim().chars().all(|c| c.is_ascii_digit())
                })
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The known key nearest to a misspelled one, if it is near enough.
fn closest<'a>(unknown: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|key| (edit_distance(unknown, key), key))
        .filter(|(distance, key)| *distance <= 2.max(key.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The effective configuration as `verdict config` prints it: one line
/// per key, `key = value  # origin`, secrets shown as `"***"`, passwords
/// in URLs redacted, unset keys commented out.
pub fn render(explained: &Explained) -> String {
    let values = redacted(&explained.config);
    let mut lines = vec![
        "# verdict: the effective configuration (defaults < verdict.toml < VERDICT_* < flags)"
            .to_owned(),
    ];
    let mut tables = Vec::new();
    for (key, value) in &values {
        let origin = explained.origins.get(key).cloned().unwrap_or(Origin::Default);
        match value {
            serde_json::Value::Null => lines.push(format!("# {key} = (unset)  # {origin}")),
            serde_json::Value::Object(_) => tables.push((key, value, origin)),
            value => lines.push(format!("{key} = {}  # {origin}", toml_literal(value))),
        }
    }
    for (key, value, origin) in tables {
        for (name, table) in value.as_object().into_iter().flatten() {
            lines.push(format!("\n[{key}.{name}]  # {origin}"));
            for (field, value) in table.as_object().into_iter().flatten() {
                if !value.is_null() {
                    lines.push(format!("{field} = {}", toml_literal(value)));
                }
            }
        }
    }
    lines.join("\n") + "\n"
}

/// The same as JSON: `{key: {value, from, …}}`.
pub fn render_json(explained: &Explained) -> serde_json::Value {
    let values = redacted(&explained.config);
    let entries = values
        .into_iter()
        .map(|(key, value)| {
            let origin = explained.origins.get(&key).cloned().unwrap_or(Origin::Default);
            let mut entry = serde_json::to_value(&origin).unwrap_or_default();
            entry["value"] = value;
            (key, entry)
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::json!({ "config": entries, "unknown_variables": explained.unknown_variables })
}

fn redacted(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(mut values) = serde_json::to_value(config).unwrap_or_default()
    else {
        return serde_json::Map::new();
    };
    for (key, value) in values.iter_mut() {
        if SECRET_KEYS.contains(&key.as_str()) && !value.is_null() {
            *value = serde_json::Value::String("***".into());
        } else if key == "webhook_urls"
            && let Some(text) = value.as_str()
        {
            let parts: Vec<String> = text.split(',').map(|url| endpoint_only(url.trim())).collect();
            *value = serde_json::Value::String(parts.join(","));
        } else if URL_KEYS.contains(&key.as_str())
            && let Some(text) = value.as_str()
        {
            let parts: Vec<String> = text.split(',').map(verdict_store::redact_url).collect();
            *value = serde_json::Value::String(parts.join(","));
        }
    }
    values
}

/// A webhook URL as scheme and host only: receivers often put their
/// secret in the path or the query (and user-info never shows).
fn endpoint_only(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = if rest.len() > authority.len() { "/***" } else { "" };
    format!("{scheme}://{host}{hidden}")
}

/// A JSON scalar as a TOML literal (JSON's string escapes are TOML's).
fn toml_literal(value: &serde_json::Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelling_is_pointed_at_its_key() {
        let known = keys();
        assert_eq!(closest("bnid", &known), Some("bind"));
        assert_eq!(closest("databse_url", &known), Some("database_url"));
        assert_eq!(closest("rate_limit_per_secnod", &known), Some("rate_limit_per_second"));
        assert_eq!(closest("colour", &known), None);
    }

    #[test]
    fn every_secret_is_redacted_and_every_password_hidden() {
        let sentinel = "hunter2-sentinel";
        let mut value = serde_json::to_value(Config::default()).expect("serializes");
        // Every key holding a `Secret` takes the sentinel: found by type,
        // so a secret added later without being listed fails here.
        let secrets: Vec<String> = value
            .as_object()
            .expect("a table")
            .iter()
            .filter(|(_, value)| value.is_null())
            .map(|(key, _)| key.clone())
            .filter(|key| {
                let mut probe = serde_json::to_value(Config::default()).expect("serializes");
                probe[key.as_str()] = serde_json::Value::String(sentinel.into());
                serde_json::from_value::<Config>(probe)
                    .map(|config| !format!("{config:?}").contains(sentinel))
                    .unwrap_or(false)
            })
            .collect();
        assert!(secrets.len() >= SECRET_KEYS.len(), "found {secrets:?}");
        for key in &secrets {
            assert!(SECRET_KEYS.contains(&key.as_str()), "{key} is a secret but not listed");
            value[key.as_str()] = serde_json::Value::String(sentinel.into());
        }
        value["database_url"] = format!("postgres://verdict:{sentinel}@db/verdict").into();
        value["smtp_url"] = format!("smtp://mailer:{sentinel}@mail:25").into();
        value["webhook_urls"] =
            format!("https://hooks.example/T0/{sentinel},https://u:{sentinel}@b.example?k=1")
                .into();
        let config: Config = serde_json::from_value(value).expect("deserializes");
        let explained =
            Explained { config, origins: BTreeMap::new(), unknown_variables: Vec::new() };
        let text = render(&explained);
        let json = render_json(&explained).to_string();
        for output in [&text, &json] {
            assert!(!output.contains(sentinel), "a secret leaked: {output}");
        }
        assert!(text.contains("jwt_secret = \"***\"  # default"), "{text}");
        assert!(text.contains("postgres://verdict:***@db/verdict"), "{text}");
        assert!(
            text.contains("webhook_urls = \"https://hooks.example/***,https://b.example/***\""),
            "{text}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_place_not_the_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("verdict.toml");
        std::fs::write(&file, "bind = \"127.0.0.1:1\"\njwt_secret = \"hunter2-unterminated\n")
            .unwrap();
        let error = load(&file, &Overrides::default()).expect_err("a syntax error").to_string();
        assert!(!error.contains("hunter2"), "the line was echoed: {error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("bind", "bind"), 0);
        assert_eq!(edit_distance("bnid", "bind"), 2);
        assert_eq!(edit_distance("bin", "bind"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
