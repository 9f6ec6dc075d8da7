//! The log, on stderr: text by default, JSON with `LUNA_LOG_FORMAT=json`.
//!
//! Values from clients reach it as fields (a login's user name, a request's
//! path). Written raw, a user name holding CR LF began a line of its own that
//! could pass for another record (`FORGED-LOG-LINE user=admin status=200`),
//! and ANSI escapes could repaint a terminal. In text, a field value that is
//! not plain is written quoted with Rust's escapes, so no line break, control
//! character or ` key=` inside it can start a line or pass for a field; a
//! message keeps its text with its control characters escaped. JSON escapes
//! every string itself.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use tracing_subscriber::field::MakeExt as _;

/// Sets up the log from `LUNA_LOG` (the filter, `info` by default) and
/// `LUNA_LOG_FORMAT` (`text` or `json`).
pub fn init() -> Result<()> {
    let filter = || tracing_subscriber::EnvFilter::try_from_env("LUNA_LOG").unwrap_or_else(|_| "info".into());
    let json = match std::env::var("LUNA_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "text") => false,
        Ok("json") => true,
        Ok(other) => bail!("LUNA_LOG_FORMAT must be text or json; got {other:?}"),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    if json {
        log.json().init();
    } else {
        let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
            let text = format!("{value:?}");
            if field.name() == "message" {
                write!(writer, "{}", escaped_message(&text))
            } else {
                write!(writer, "{}={}", field.name(), field_value(&text))
            }
        })
        .delimited(" ");
        log.fmt_fields(fields)
            // Colours for a terminal only: a log file or collector gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    Ok(())
}

/// A field's value as one token of a line: as it is when every character is
/// plain, else quoted with Rust's escapes (a value already quoted that way,
/// from a `?` field, is kept).
fn field_value(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._:/-@+,()[]{}#%&*!?~^$;|<>'".contains(c);
    let already_quoted = text.len() >= 2
        && text.starts_with('"')
        && text.ends_with('"')
        && !text.chars().any(char::is_control);
    if (!text.is_empty() && text.chars().all(plain)) || already_quoted {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

/// A message with its control characters escaped (it stays on its line).
fn escaped_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_clients_stay_on_their_line_and_in_their_field() {
        for hostile in [
            "p3\r\nFORGED-LOG-LINE user=admin status=200 fake",
            "nul\0byte",
            "\u{1b}[2J\u{1b}[31mred",
            "a user=admin",
            "\"quoted\nwith a break\"",
        ] {
            let written = field_value(hostile);
            assert!(!written.chars().any(char::is_control), "{written:?}");
            assert!(written.starts_with('"') && written.ends_with('"'), "{written}");
            let message = escaped_message(hostile);
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
        assert_eq!(field_value("admin"), "admin");
        assert_eq!(
            field_value("/api/v1/cckm/hsm/luna/keys"),
            "/api/v1/cckm/hsm/luna/keys"
        );
        assert_eq!(field_value("\"from a ? field\""), "\"from a ? field\"");
        assert_eq!(field_value(""), "\"\"");
    }
}
