//! The config file: every `serve` setting in TOML, by its flag's name with
//! `_` for `-` (`token_concurrency = 8`), beneath the flags and the
//! environment. Where each setting came from, for `check-config`.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory as _, FromArgMatches as _};

use crate::settings::Cli;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Environment(String),
    File { line: usize },
    Default,
    Unset,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Environment(variable) => write!(f, "environment ({variable})"),
            Source::File { line } => write!(f, "config file, line {line}"),
            Source::Default => f.write_str("default"),
            Source::Unset => f.write_str("not set"),
        }
    }
}

/// The command line read with the config file it names beneath it (flag >
/// environment > file > default), and each setting with its source.
pub fn parse() -> Result<(Cli, Report)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    // A first look, for the command, the file and what flags and variables
    // set; the rules (a flag that requires another, which the file may give)
    // are checked once, with the file's settings in.
    let first = Cli::command().ignore_errors(true).get_matches_from(&args);
    let Some((name, sub)) = first.subcommand() else {
        // No command (or --help, --version): clap says what to do.
        Cli::command().get_matches_from(&args);
        bail!("a command is required");
    };
    let mut from_file = BTreeMap::new();
    let mut args = args;
    // `restore` takes no config file.
    if let Some(path) = sub.try_get_one::<std::path::PathBuf>("config").ok().flatten() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        for (id, line, values) in file_settings(name, sub, path, &text)? {
            args.extend(values);
            from_file.insert(id, line);
        }
    }
    let matches = Cli::command().get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow!("{e}"))?;
    let sub = matches
        .subcommand_matches(name)
        .ok_or_else(|| anyhow!("the command {name} was lost reading the config file"))?;
    Ok((cli, report(name, sub, &from_file)))
}

/// The file's settings for command `name` that no flag or variable set:
/// each as its id, its line and the flags that give it.
fn file_settings(
    name: &str,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<(String, usize, Vec<OsString>)>> {
    // The parser's message only: its full text quotes the line, which may
    // hold a secret.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map_or(1, |at| text[..at.start.min(text.len())].matches('\n').count() + 1);
        anyhow!(
            "the config file {} is not TOML: line {line}: {}",
            path.display(),
            e.message()
        )
    })?;
    let command = Cli::command();
    let command = command
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("no command {name}"))?;
    let mut settings = Vec::new();
    for (key, value) in &table {
        let line = line_of(text, key);
        let at = || format!("{} line {line}: `{key}`", path.display());
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && key != "config")
            .ok_or_else(|| anyhow!("{} is not a setting of luna-server {name}", at()))?;
        let set_above = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        // A flag or variable wins over the file, also where it gives the
        // setting's alternative (a password, or the file that holds it).
        let alternative_set = ALTERNATIVES
            .iter()
            .any(|(a, b)| (key == a && set_above(b)) || (key == b && set_above(a)));
        if set_above(key) || alternative_set {
            continue;
        }
        if holds_secret(key, value) {
            crate::secrets::check_private("the config file (it holds a secret)", path)?;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(key));
        let texts: Vec<String> = match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(set)) => {
                settings.push((
                    key.clone(),
                    line,
                    if *set {
                        vec![OsString::from(&flag)]
                    } else {
                        Vec::new()
                    },
                ));
                continue;
            }
            (ArgAction::SetTrue, _) => bail!("{} must be true or false", at()),
            (ArgAction::Append, toml::Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow!("{} must be a list of strings", at()))?,
            (_, value) => {
                vec![scalar(arg, value).ok_or_else(|| anyhow!("{} must be {}", at(), expected(arg)))?]
            }
        };
        // Each value through the flag's own parser (its ranges and forms),
        // alone, so that what is wrong is told of this key and line.
        let alone = clap::Command::new("luna-server").arg(
            clap::Arg::new("value")
                .long("value")
                .value_parser(arg.get_value_parser().clone()),
        );
        for text in &texts {
            alone
                .clone()
                .try_get_matches_from(["luna-server", &format!("--value={text}")])
                .map_err(|e| anyhow!("{}: {}", at(), first_line(&e.to_string())))?;
        }
        settings.push((
            key.clone(),
            line,
            texts
                .iter()
                .map(|t| OsString::from(format!("{flag}={t}")))
                .collect(),
        ));
    }
    Ok(settings)
}

/// A clap error's sentence, without its `error:` and the usage after it.
fn first_line(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    line.strip_prefix("error: ")
        .unwrap_or(line)
        .replace(" for '--value <value>'", "")
}

/// Settings of which one may be given: a flag or variable that sets either
/// wins over the file's value of the other.
const ALTERNATIVES: [(&str, &str); 1] = [("admin_password", "admin_password_file")];

/// Whether the value is a secret: the admin password, or a database URL
/// with a password in it.
fn holds_secret(key: &str, value: &toml::Value) -> bool {
    match (key, value.as_str()) {
        ("admin_password", _) => true,
        ("database_url", Some(url)) => crate::secrets::redact_url_password(url) != url,
        _ => false,
    }
}

fn is_number(arg: &clap::Arg) -> bool {
    let id = arg.get_value_parser().type_id();
    [TypeId::of::<u16>(), TypeId::of::<u32>(), TypeId::of::<i64>()]
        .iter()
        .any(|t| id == *t)
}

/// The value as the flag's text, if it is of the setting's type.
fn scalar(arg: &clap::Arg, value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::Integer(n) if is_number(arg) => Some(n.to_string()),
        toml::Value::String(text) if !is_number(arg) => Some(text.clone()),
        _ => None,
    }
}

fn expected(arg: &clap::Arg) -> &'static str {
    if is_number(arg) {
        "a whole number"
    } else {
        "a string"
    }
}

/// The line of `key = …` (or `"key" = …`) in the file (1 if it cannot be told).
fn line_of(text: &str, key: &str) -> usize {
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            [key, quoted.as_str()].iter().any(|name| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        })
        .map_or(1, |at| at + 1)
}

/// Each setting of command `name`: its values as given (none if unset)
/// and its source.
pub type Report = Vec<(String, Vec<String>, Source)>;

fn report(name: &str, matches: &ArgMatches, from_file: &BTreeMap<String, usize>) -> Report {
    let command = Cli::command();
    let Some(command) = command.find_subcommand(name) else {
        return Vec::new();
    };
    command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .map(|arg| {
            let id = arg.get_id().as_str().to_owned();
            let values = matches
                .get_raw(&id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = match (from_file.get(&id), matches.value_source(&id)) {
                (Some(line), _) => Source::File { line: *line },
                (None, Some(ValueSource::CommandLine)) => Source::Flag,
                (None, Some(ValueSource::EnvVariable)) => Source::Environment(
                    arg.get_env()
                        .map(|v| v.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                (None, Some(ValueSource::DefaultValue)) => Source::Default,
                (None, _) => Source::Unset,
            };
            (id, values, source)
        })
        .collect()
}
