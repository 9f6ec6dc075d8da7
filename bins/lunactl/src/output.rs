//! What lunactl prints on stdout: a readable table (lists) or field list (one
//! record), or the server's JSON with `-o json`.

use std::fmt::Write as _;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The columns a list of each kind shows; `-o json` shows everything.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Key,
    Job,
    Partition,
    Server,
    Schedule,
    Keystore,
    Connection,
    User,
    Audit,
}

impl Kind {
    fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Key => &[
                "id",
                "label",
                "status",
                "operation",
                "operation_status",
                "algorithm",
                "size",
                "object_type",
                "partition_label",
            ],
            Kind::Job => &[
                "id",
                "job_type",
                "overall_status",
                "abort",
                "createdAt",
                "completed_at",
            ],
            Kind::Partition => &["id", "partition_label", "serial_number", "ha_enabled", "members"],
            Kind::Server => &["id", "hostname", "channel", "products", "createdAt"],
            Kind::Connection => &["id", "name", "is_ha_enabled", "partitions", "createdAt"],
            Kind::Schedule => &[
                "id",
                "name",
                "run_at",
                "disabled",
                "job_config_params.job_type",
                "next_run_at",
                "last_run.outcome",
            ],
            Kind::Keystore => &["id", "name", "uri_path", "region", "partition_id", "credentials"],
            Kind::User => &["user_id", "username", "groups", "createdAt"],
            Kind::Audit => &[
                "seq",
                "at",
                "username",
                "action",
                "resource_type",
                "resource_id",
                "outcome",
            ],
        }
    }
}

/// One record on one line: its columns separated by two spaces, or its JSON
/// (JSON Lines, for a pipe into a log shipper).
pub fn line(value: &Value, kind: Kind, format: Format) -> String {
    match format {
        Format::Json => value.to_string(),
        Format::Table => kind
            .columns()
            .iter()
            .map(|column| cell(field(value, column)))
            .collect::<Vec<_>>()
            .join("  "),
    }
}

/// A column's value: a field, or a field of a field (`last_run.outcome`).
fn field<'a>(value: &'a Value, column: &str) -> &'a Value {
    column.split('.').fold(value, |at, name| &at[name])
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(o) => o
                    .get("partition_label")
                    .or_else(|| o.get("access_key_id"))
                    .map_or_else(|| item.to_string(), cell),
                other => cell(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A list answer (`resources`, `total`) as a table and a count line.
pub fn list(value: &Value, kind: Kind, format: Format) -> String {
    if format == Format::Json {
        return pretty(value);
    }
    let columns = kind.columns();
    let rows: Vec<Vec<String>> = value["resources"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|c| cell(field(item, c))).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "{} of {} (skip {})",
        rows.len(),
        value["total"],
        value["skip"]
    );
    out
}

/// One record: `field: value` lines, nested records indented.
pub fn record(value: &Value, format: Format) -> String {
    if format == Format::Json || !value.is_object() {
        return pretty(value);
    }
    let mut out = String::new();
    write_fields(&mut out, value, 0);
    out
}

fn write_fields(out: &mut String, value: &Value, depth: usize) {
    let Some(fields) = value.as_object() else {
        return;
    };
    let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
    let indent = "  ".repeat(depth);
    for (name, field) in fields {
        match field {
            Value::Object(inner) if !inner.is_empty() => {
                let _ = writeln!(out, "{indent}{name}:");
                write_fields(out, field, depth + 1);
            }
            Value::Object(_) => {}
            other => {
                let _ = writeln!(out, "{indent}{name:<width$}  {}", cell(other));
            }
        }
    }
}

pub fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}
