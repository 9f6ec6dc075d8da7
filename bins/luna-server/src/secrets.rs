//! Secrets given by path: read only from files their owner alone may read,
//! so that none travels on a command line (`ps`) or in an environment
//! (`/proc/*/environ`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use secrecy::{ExposeSecret, SecretString};

/// Refuses `path` unless only its owner may read or write it; `what` names
/// the secret in the sentence.
pub fn check_private(what: &str, path: &Path) -> Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} is open to its group or others (mode {:04o}); make it its owner's alone: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// The secret a file holds (one line; its line ending is not part of it).
pub fn read_secret_file(what: &str, path: &Path) -> Result<SecretString> {
    check_private(what, path)?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() || secret.contains('\n') {
        bail!("{what} {} must hold the secret on one line", path.display());
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// A PostgreSQL URL with `password` set for the user it names (the URL
/// must name a user, and no password of its own).
pub fn with_password(url: &str, password: &SecretString) -> Result<SecretString> {
    let Some((scheme, rest)) = url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
    else {
        bail!("a database password file is for a postgres:// database URL");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user, host)) = authority.rsplit_once('@') else {
        bail!(
            "the database URL must name its user (postgres://USER@HOST/DB) for the password file's password"
        );
    };
    if user.contains(':') {
        bail!("the database URL names a password already; give it in one place only");
    }
    let encoded: String = password
        .expose_secret()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    Ok(SecretString::from(format!(
        "{scheme}://{user}:{encoded}@{host}{tail}"
    )))
}

/// The URL with any password in it replaced, for showing: the user part's
/// (up to the last `@`, whatever the password holds: a `/`, a `?`) and a
/// `password=` parameter's. Where the URL is unclear more is hidden, never less.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_parameters(url);
    };
    let rest = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{user}:(redacted)@{}", &rest[at + 1..]),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    format!("{scheme}://{}", redact_parameters(&rest))
}

/// `password=…` parameters (a URL's query, libpq's key=value) hidden.
fn redact_parameters(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let value = at + "password=".len();
        shown.push_str(&rest[..value]);
        shown.push_str("(redacted)");
        let end = rest[value..].find(['&', ' ']).map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    shown.push_str(rest);
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_into_the_url_encoded_and_only_where_none_is() {
        let password = SecretString::from("p@ss w:rd/é".to_owned());
        let url = with_password("postgres://luna@db.example:5432/luna?sslmode=require", &password).unwrap();
        assert_eq!(
            url.expose_secret(),
            "postgres://luna:p%40ss%20w%3Ard%2F%C3%A9@db.example:5432/luna?sslmode=require"
        );
        let twice = with_password("postgres://luna:old@db/luna", &password).unwrap_err();
        assert!(twice.to_string().contains("names a password already"), "{twice}");
        let no_user = with_password("postgres://db/luna", &password).unwrap_err();
        assert!(no_user.to_string().contains("must name its user"), "{no_user}");
        assert!(with_password("sqlite:///tmp/x.db", &password).is_err());
        assert_eq!(
            redact_url_password(url.expose_secret()),
            "postgres://luna:(redacted)@db.example:5432/luna?sslmode=require"
        );
        assert_eq!(
            redact_url_password("postgres://luna@db/x"),
            "postgres://luna@db/x"
        );
        assert_eq!(
            redact_url_password("postgres://luna:pa/ss?w#rd@db/x?sslmode=require&password=two"),
            "postgres://luna:(redacted)@db/x?sslmode=require&password=(redacted)"
        );
        assert_eq!(
            redact_url_password("postgres://luna@db/x?password=p"),
            "postgres://luna@db/x?password=(redacted)"
        );
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_and_a_private_one_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_secret_file("the admin password file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("mode 0644") && refused.contains("chmod 600"),
            "{refused}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = read_secret_file("the admin password file", &path).unwrap();
        assert_eq!(read.expose_secret(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_secret_file("the admin password file", &path).is_err(),
            "an empty secret"
        );
    }
}
