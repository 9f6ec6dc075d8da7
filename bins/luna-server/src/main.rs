//! `luna-server serve`: read settings, set up the data directory, wire the layers, start.

mod embedded;
mod settings;

use anyhow::{Context, Result};
use clap::Parser;
use luna_store::{PinCipher, PoolOptions, Store};
use settings::{Cli, Command, Settings};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LUNA_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(settings) => serve(&settings),
    }
}

#[allow(clippy::print_stdout)] // telling the operator what was set up is this command's output
fn serve(settings: &Settings) -> Result<()> {
    embedded::create_data_dir(&settings.data_dir)?;
    // SoftHSM2 reads its configuration at C_Initialize: open the module first.
    let (module, demo_tokens) = embedded::open_module(&settings.data_dir, settings.pkcs11_module.as_deref())?;
    let pins = PinCipher::load_or_create(&settings.data_dir.join("pin.key"))?;
    let url = settings.database_url();
    let store = Store::open(&url, pins, PoolOptions::default()).context("opening the database")?;
    if demo_tokens {
        embedded::ensure_demo_partitions(&store, &module).context("setting up the demo partitions")?;
    }
    println!("luna-server {}", env!("CARGO_PKG_VERSION"));
    println!("data directory: {}", settings.data_dir.display());
    println!(
        "database:       {:?} ({url_kind})",
        store.backend(),
        url_kind = if url.starts_with("sqlite") {
            "embedded"
        } else {
            "server"
        }
    );
    println!("PKCS#11 module: {}", module.path().display());
    println!("partitions:");
    for partition in store.all_partitions()? {
        println!("  {}", embedded::describe(&partition));
    }
    println!(
        "The HTTP API ({} on {}) is not built yet: this command sets up the data directory and exits.",
        if settings.insecure_http { "HTTP" } else { "HTTPS" },
        settings.listen
    );
    Ok(())
}
