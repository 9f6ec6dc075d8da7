//! `luna-server serve`: read settings, set up the data directory, wire the layers, start.

mod backup;
mod config;
mod embedded;
mod logging;
mod notify;
mod secrets;
mod settings;

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::{Context, Result};
use luna_api::auth::Auth;
use luna_api::server::{bootstrap_admin, start, Config};
use luna_api::view::Tenancy;
use luna_runner::RunnerSettings;
use luna_store::{PinCipher, PoolOptions, Store};
use secrecy::ExposeSecret;
use settings::{Command, Settings};

fn main() -> Result<()> {
    logging::init()?;
    let (cli, report) = config::parse()?;
    match cli.command {
        Command::Serve(settings) => serve(&settings),
        Command::CheckConfig(settings) => check_config(&settings, &report),
        Command::Backup(args) => {
            let passphrase = args.passphrase.read(true)?;
            let data = &args.settings.data_dir;
            if !data.join("pin.key").is_file() {
                anyhow::bail!(
                    "{} holds no pin.key: it is not a luna-server data directory",
                    data.display()
                );
            }
            let pins = PinCipher::load_or_create(&data.join("pin.key"))?;
            let url = args.settings.database_url()?;
            let store = Store::open(url.expose_secret(), pins, PoolOptions::default())
                .context("opening the database")?;
            backup::backup(&store, data, &args.to, &passphrase)
        }
        Command::Restore(args) => {
            let passphrase = args.passphrase.read(false)?;
            backup::restore(&args.from, &args.data_dir, &passphrase)
        }
    }
}

/// Prints each setting as the config file would hold it, with where it
/// came from; a secret is never printed. The secret files and sinks are
/// checked as `serve` checks them.
#[allow(clippy::print_stdout)] // the settings are this command's output
fn check_config(settings: &Settings, report: &config::Report) -> Result<()> {
    settings.admin_password()?;
    settings.database_url()?;
    if let Some(key) = &settings.tls_key {
        secrets::check_private("the TLS key", key)?;
    }
    for url in &settings.audit_forward {
        luna_api::forward::Sink::parse(url, settings.audit_forward_ca.as_deref())
            .map_err(|e| anyhow::anyhow!("--audit-forward {e}"))?;
    }
    for (name, values, source) in report {
        let shown: Vec<String> = values
            .iter()
            .map(|value| match name.as_str() {
                "admin_password" => "(redacted)".to_owned(),
                "database_url" => secrets::redact_url_password(value),
                _ => value.clone(),
            })
            .map(|value| format!("{value:?}"))
            .collect();
        let value = match shown.as_slice() {
            [] => "(unset)".to_owned(),
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        println!("{name} = {value}  # {source}");
    }
    Ok(())
}

#[allow(clippy::print_stdout)] // telling the operator what was set up is this command's output
fn serve(settings: &Settings) -> Result<()> {
    // Settings that can be wrong are checked before anything is set up.
    let audit_sinks = settings
        .audit_forward
        .iter()
        .map(|url| luna_api::forward::Sink::parse(url, settings.audit_forward_ca.as_deref()))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("--audit-forward {e}"))?;
    let admin_password = settings.admin_password()?;
    let url = settings.database_url()?;
    if let Some(key) = &settings.tls_key {
        secrets::check_private("the TLS key", key)?;
    }
    let data = &settings.data_dir;
    embedded::create_data_dir(data)?;
    // SoftHSM2 reads its configuration at C_Initialize: open the module first.
    let (module, demo_tokens) = embedded::open_module(data, settings.pkcs11_module.as_deref())?;
    let pins = PinCipher::load_or_create(&data.join("pin.key"))?;
    let store = Store::open(url.expose_secret(), pins, PoolOptions::default())
        .context("opening the database")?
        .with_audit_checkpoint(&data.join("audit.head"))
        .context("reading the audit trail's checkpoint")?;
    store.check_pin_key().with_context(|| {
        format!(
            "{} is not the key that sealed this database's connection PINs; instances that share a database must share pin.key (and jwt.key)",
            data.join("pin.key").display()
        )
    })?;
    if demo_tokens {
        embedded::ensure_demo_partitions(&store, &module, &settings.instance())
            .context("setting up the demo partitions")?;
    }
    let instance = settings.instance();
    let generated = bootstrap_admin(
        &store,
        &instance,
        admin_password.as_ref(),
        &data.join("admin-password"),
    )?;
    let auth = Auth::from_key_file(&data.join("jwt.key"), i64::from(settings.token_duration))?;
    let served_cert = if settings.insecure_http {
        None
    } else {
        let (cert, key) = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let (cert, key) = (data.join("tls-cert.pem"), data.join("tls-key.pem"));
                luna_api::tls::ensure_self_signed(&cert, &key)
                    .context("generating a self-signed certificate")?;
                (cert, key)
            }
        };
        Some(
            luna_api::tls::ServerCert::load(&cert, &key)
                .with_context(|| format!("loading {}", cert.display()))?,
        )
    };
    let listener =
        TcpListener::bind(settings.listen).with_context(|| format!("listening on {}", settings.listen))?;
    let scheme = if served_cert.is_some() { "https" } else { "http" };

    println!("luna-server {}", env!("CARGO_PKG_VERSION"));
    println!("data directory: {}", data.display());
    println!("database:       {:?}", store.backend());
    println!("instance:       {instance}");
    for sink in &audit_sinks {
        println!("audit to:       {}", sink.name);
    }
    for line in embedded::describe_module(&module).context("reading the PKCS#11 module's tokens")? {
        println!("{line}");
    }
    println!("partitions:");
    for partition in store.all_partitions()? {
        println!("  {}", embedded::describe(&partition));
    }
    if let Some(password) = generated {
        let kept = data.join("admin-password");
        // Shown on a terminal only: a service's output is kept (the journal,
        // a container's log), and a secret must not be.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "admin password: {} (shown once; also in {})",
                password.expose_secret(),
                kept.display()
            );
        } else {
            println!("admin password: generated, kept in {} (0600)", kept.display());
        }
    }
    println!("listening on {scheme}://{}", listener.local_addr()?);

    let in_use = Arc::clone(&module);
    let store_for_health = store.clone();
    let config = Config {
        store,
        instance,
        module,
        auth,
        tenancy: Tenancy::default(),
        runner: RunnerSettings {
            workers: usize::from(settings.workers),
            token_concurrency: usize::from(settings.token_concurrency),
            lease: time::Duration::seconds(i64::from(settings.operation_lease_secs)),
            stuck_after: std::time::Duration::from_secs(u64::from(settings.stuck_after_secs)),
            token_outage: std::time::Duration::from_secs(u64::from(settings.token_outage_secs)),
            queue_per_partition: settings.queue_per_partition as usize,
            queue_total: settings.queue_total as usize,
            ..RunnerSettings::default()
        },
        tls: served_cert
            .as_ref()
            .map(|cert| cert.server_config(settings.xks_client_ca.as_deref()))
            .transpose()
            .context("setting up TLS")?,
        xks_client_subject: settings
            .xks_client_ca
            .as_ref()
            .map(|_| settings.xks_client_subject.clone()),
        http_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        request_deadline: std::time::Duration::from_secs(15),
        token_opener: None,
        audit_sinks,
        forward: luna_api::forward::ForwardSettings::default(),
        audit_lag_bound: settings.audit_forward_lag_bound,
    };
    let supervisor = notify::Supervisor::from_env().map(Arc::new);
    let watched = store_for_health;
    let told = supervisor.clone();
    actix_web::rt::System::new().block_on(async move {
        actix_web::rt::spawn(reload_on_hangup(served_cert));
        let running = start(config, listener)?;
        if let Some(supervisor) = told {
            supervisor.tell("READY=1");
            supervisor.watch(watched, running.runner.stuck_operations());
        }
        running.run().await
    })?;
    if let Some(supervisor) = &supervisor {
        supervisor.tell("STOPPING=1");
    }
    in_use.finalize_for_exit();
    tracing::info!("stopped");
    Ok(())
}

/// On each SIGHUP, reads the TLS certificate and key again: new connections
/// get the new pair, those already up keep theirs. A pair that does not load
/// leaves the one in use. Without TLS there is nothing to read, and SIGHUP
/// no longer stops the server (its default).
async fn reload_on_hangup(served: Option<Arc<luna_api::tls::ServerCert>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "SIGHUP cannot be listened for: the TLS certificate is read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match served.as_deref().map(luna_api::tls::ServerCert::reload) {
            Some(Ok(())) => tracing::info!("SIGHUP: the TLS certificate and key were read again"),
            Some(Err(error)) => {
                tracing::warn!(%error, "SIGHUP: the TLS certificate and key could not be read; the pair in use stays")
            }
            None => tracing::info!("SIGHUP: plain HTTP, no certificate to read again"),
        }
    }
}
