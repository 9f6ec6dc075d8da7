//! The server's settings: each flag has an environment variable of the same meaning.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(
    name = "luna-server",
    version,
    about = "CipherTrust CCKM Luna HSM keys API over PKCS#11 tokens"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up the data directory (on first start) and serve the API.
    Serve(Settings),
    /// Print the settings `serve` would run with and where each came from
    /// (flag, environment, config file line, default), secrets redacted.
    CheckConfig(Settings),
    /// Copy the data directory's database (consistently, while the server
    /// runs) and keys into one file encrypted under a passphrase.
    Backup(BackupArgs),
    /// Write a backup into a new data directory.
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// The backup file to write (mode 0600; an existing file is not replaced).
    #[arg(long)]
    pub to: PathBuf,
    #[command(flatten)]
    pub passphrase: Passphrase,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file to read.
    #[arg(long)]
    pub from: PathBuf,
    /// The new data directory (absent or empty).
    #[arg(long, env = "LUNA_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub passphrase: Passphrase,
}

#[derive(Debug, clap::Args)]
pub struct Passphrase {
    /// A file holding the backup's passphrase on one line (only its owner
    /// may read it); default: asked on the terminal.
    #[arg(long, env = "LUNA_BACKUP_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl Passphrase {
    /// From the file, or from the terminal (twice, when `confirm`).
    pub fn read(&self, confirm: bool) -> anyhow::Result<SecretString> {
        if let Some(path) = &self.passphrase_file {
            return crate::secrets::read_secret_file("the passphrase file", path);
        }
        let first = rpassword::prompt_password("backup passphrase: ")?;
        if confirm && rpassword::prompt_password("again: ")? != first {
            anyhow::bail!("the two passphrases differ");
        }
        if first.is_empty() {
            anyhow::bail!("the passphrase must not be empty");
        }
        Ok(SecretString::from(first))
    }
}

#[derive(Debug, clap::Args)]
pub struct Settings {
    /// A TOML file of these settings, each by its flag's name with `_` for
    /// `-` (`token_concurrency = 8`); flags and variables win over it.
    #[arg(long, env = "LUNA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "LUNA_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Where the database, keys, certificates and SoftHSM2 tokens live.
    #[arg(long, env = "LUNA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data-dir>/luna.db`.
    #[arg(long, env = "LUNA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The PKCS#11 module; default: SoftHSM2 from the usual library folders,
    /// with demo tokens set up in the data directory.
    #[arg(long, env = "LUNA_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// Password of the bootstrap `admin` user; default: generated on first
    /// start. Prefer `--admin-password-file`: a flag shows in `ps`, a
    /// variable in `/proc/*/environ`.
    #[arg(long, env = "LUNA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<SecretString>,
    /// A file holding the bootstrap `admin` user's password, on one line;
    /// only its owner may read it.
    #[arg(long, env = "LUNA_ADMIN_PASSWORD_FILE", conflicts_with = "admin_password")]
    pub admin_password_file: Option<PathBuf>,
    /// A file holding the password of the user `--database-url` names
    /// (PostgreSQL), on one line; only its owner may read it.
    #[arg(long, env = "LUNA_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    /// The server's certificate chain (PEM); default: self-signed for localhost.
    #[arg(long, env = "LUNA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); only its owner may read it.
    #[arg(long, env = "LUNA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that AWS KMS's client certificates chain to:
    /// XKS proxy calls are then taken only over mutual TLS. Other clients
    /// connect without a certificate as before; one that presents a
    /// certificate not from these CAs fails the handshake.
    #[arg(long, env = "LUNA_XKS_CLIENT_CA", conflicts_with = "insecure_http")]
    pub xks_client_ca: Option<PathBuf>,
    /// The common name an XKS call's client certificate must carry, with
    /// mutual TLS on; `{region}` stands for the keystore's region. The
    /// default is the name AWS KMS's certificates carry.
    #[arg(
        long,
        env = "LUNA_XKS_CLIENT_SUBJECT",
        default_value = "cks.kms.{region}.amazonaws.com"
    )]
    pub xks_client_subject: String,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long, env = "LUNA_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub insecure_http: bool,
    /// Operations in flight at once, across every token (their token calls
    /// run on the blocking pool).
    #[arg(long, env = "LUNA_WORKERS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Operations of one partition in flight at once: calls its tokens get
    /// together. SoftHSM2 and openCryptoki still take one write at a time
    /// (they race otherwise); a network HSM runs many.
    #[arg(long, env = "LUNA_TOKEN_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub token_concurrency: u16,
    /// Seconds a worker holds an operation without renewing; after a crash,
    /// operations are taken up again once their lease has run out.
    #[arg(long, env = "LUNA_OPERATION_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=3600))]
    pub operation_lease_secs: u32,
    /// Seconds an operation's token work may run before it is called stuck:
    /// its lease is then left to run out and the health check answers 503,
    /// asking the supervisor for a restart (a PKCS#11 call cannot be cancelled).
    #[arg(long, env = "LUNA_STUCK_AFTER_SECS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(5..=86400))]
    pub stuck_after_secs: u32,
    /// Seconds a token (an HSM partition) may be away before the work waiting
    /// for it fails, saying so. Until then its operations wait, uncounted,
    /// and resume by themselves when it is back.
    #[arg(long, env = "LUNA_TOKEN_OUTAGE_SECS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=604800))]
    pub token_outage_secs: u32,
    /// The most key operations one partition may have waiting for its
    /// tokens; past it, creates are refused (429, with Retry-After from the
    /// rate the queue drains at) until it drains. Nothing accepted is dropped.
    #[arg(long, env = "LUNA_QUEUE_PER_PARTITION", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub queue_per_partition: u32,
    /// The most key operations waiting across every partition.
    #[arg(long, env = "LUNA_QUEUE_TOTAL", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub queue_total: u32,
    /// Lifetime of bearer tokens, in seconds.
    #[arg(long, env = "LUNA_TOKEN_DURATION", default_value_t = 300, value_parser = clap::value_parser!(u32).range(30..=86400))]
    pub token_duration: u32,
    /// This instance's name, in its audit records (default: the host's name
    /// and the port it listens on). 1 to 64 letters, digits, `.`, `-`,
    /// `_` and `:`.
    #[arg(long, env = "LUNA_INSTANCE_NAME", value_parser = instance_name)]
    pub instance_name: Option<String>,
    /// Forwards the audit trail, every record at least once and in order:
    /// `syslog+tcp://host:port`, `syslog+tls://host:port` (RFC 5424, octet
    /// counted) or `file:///path` (JSON Lines). Repeat for several sinks
    /// (in the variable, comma separated).
    #[arg(long, env = "LUNA_AUDIT_FORWARD", value_delimiter = ',')]
    pub audit_forward: Vec<String>,
    /// The CA certificates (PEM) a `syslog+tls://` receiver is checked against.
    #[arg(long, env = "LUNA_AUDIT_FORWARD_CA")]
    pub audit_forward_ca: Option<PathBuf>,
    /// `healthz` says `degraded` while a sink is more records behind than this.
    #[arg(long, env = "LUNA_AUDIT_FORWARD_LAG_BOUND", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub audit_forward_lag_bound: i64,
}

fn instance_name(name: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
    if (1..=64).contains(&name.len()) && name.chars().all(allowed) {
        Ok(name.to_owned())
    } else {
        Err("1 to 64 letters, digits, '.', '-', '_' and ':'".into())
    }
}

impl Settings {
    /// The instance's name: as given, or the host's name and the listen port.
    pub fn instance(&self) -> String {
        self.instance_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "luna-server".into());
            format!("{host}:{}", self.listen.port())
        })
    }

    /// The database URL, with the password file's password in it if one is given.
    pub fn database_url(&self) -> anyhow::Result<SecretString> {
        let url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("luna.db").display()));
        match &self.database_password_file {
            Some(path) => {
                let password = crate::secrets::read_secret_file("the database password file", path)?;
                crate::secrets::with_password(&url, &password)
            }
            None => Ok(SecretString::from(url)),
        }
    }

    /// The bootstrap admin's password, if one is given (else one is generated).
    pub fn admin_password(&self) -> anyhow::Result<Option<SecretString>> {
        match (&self.admin_password, &self.admin_password_file) {
            (Some(password), _) => Ok(Some(password.clone())),
            (None, Some(path)) => crate::secrets::read_secret_file("the admin password file", path).map(Some),
            (None, None) => Ok(None),
        }
    }
}
