//! The embedded default: SoftHSM2 tokens in the data directory, registered as
//! an HA partition (two members) and a single partition, ready for keys.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use luna_domain::partition::MemberRequest;
use luna_domain::query::parse_list_query;
use luna_domain::{ConnectionRequest, Partition};
use luna_pkcs11::softhsm::SoftHsmHome;
use luna_pkcs11::Module;
use luna_runner::audit::by_the_service;
use luna_runner::registry::{add_partition, register_connection};
use luna_store::Store;
use rand::distributions::{Alphanumeric, DistString};
use secrecy::SecretString;

/// The demo connections and the tokens each one lists.
const DEMO: &[(&str, bool, &[&str])] = &[
    ("demo-ha", true, &["demo-ha-1", "demo-ha-2"]),
    ("demo-single", false, &["demo-single"]),
];

/// Opens the PKCS#11 module. A module named by the operator is used as its
/// own environment configures it (`SOFTHSM2_CONF`, openCryptoki's daemon, a
/// Luna client's `Chrystoki.conf`), with the tokens the operator made. Only
/// when none is named is it the embedded default: SoftHSM2 with its tokens
/// under `<data-dir>/softhsm` (the second value is then true).
pub fn open_module(data_dir: &Path, module: Option<&Path>) -> Result<(Arc<Module>, bool)> {
    match module {
        Some(path) => Ok((Module::open(path)?, false)),
        None => {
            let home = SoftHsmHome::open(&data_dir.join("softhsm"), None)?;
            Ok((Arc::clone(home.module()), true))
        }
    }
}

/// The start-up banner's lines on the module and the tokens it holds.
pub fn describe_module(module: &Module) -> Result<Vec<String>> {
    let library = module.library_info()?;
    let mut lines = vec![format!(
        "PKCS#11 module: {} ({} {}, version {})",
        module.path().display(),
        library.manufacturer,
        library.description,
        library.version
    )];
    let tokens = module.tokens()?;
    if tokens.is_empty() {
        lines.push("tokens:         none initialised".into());
    } else {
        lines.push("tokens:".into());
    }
    for token in tokens {
        let mut line = format!(
            "  {}  serial {}  ({} {})",
            token.label, token.serial_number, token.manufacturer, token.model
        );
        if !token.unreadable.is_empty() {
            line.push_str(&format!("; unreadable: {}", token.unreadable.join("; ")));
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Creates and registers the demo tokens on a fresh data directory; leaves an
/// already set-up one as it is.
pub fn ensure_demo_partitions(store: &Store, module: &Arc<Module>, instance: &str) -> Result<()> {
    let registered = store.list_connections(&parse_list_query(&[])?)?.total;
    if registered > 0 {
        return Ok(());
    }
    let present: Vec<String> = module.tokens()?.into_iter().map(|t| t.label).collect();
    if DEMO
        .iter()
        .flat_map(|(_, _, labels)| labels.iter())
        .any(|l| present.iter().any(|p| p == l))
    {
        bail!(
            "the data directory holds demo tokens but no database records of them, so their PIN is unknown; \
             remove the data directory to start over"
        );
    }
    // The PINs live only sealed in the database. The SO PIN is used here, to
    // initialise the tokens and to give the HA members their cloning domain
    // (so that non-extractable keys replicate), and dropped.
    let pin = SecretString::from(Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24));
    let so_pin = SecretString::from(Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24));
    for (name, ha, labels) in DEMO {
        for label in *labels {
            module.init_token(label, &so_pin, &pin)?;
        }
        let request = ConnectionRequest {
            name: Some((*name).into()),
            description: Some("SoftHSM2 tokens set up by luna-server in its data directory".into()),
            password: Some(pin.clone()),
            so_password: ha.then(|| so_pin.clone()),
            ha_enabled: *ha,
            partitions: labels
                .iter()
                .map(|l| MemberRequest {
                    hostname: Some("localhost".into()),
                    partition_label: Some((*l).into()),
                    serial_number: None,
                })
                .collect(),
            ..Default::default()
        };
        let connection = by_the_service(instance, "set up demo connection", "connection");
        register_connection(store, module, request.validate()?, &connection)?;
        add_partition(
            store,
            name,
            &by_the_service(instance, "set up demo partition", "partition"),
        )?;
    }
    Ok(())
}

/// Creates the data directory readable by its owner only.
pub fn create_data_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", dir.display()))?;
    }
    Ok(())
}

pub fn describe(partition: &Partition) -> String {
    let members: Vec<String> = partition
        .members
        .iter()
        .map(|m| format!("{} (serial {})", m.partition_label, m.serial_number))
        .collect();
    let kind = if partition.ha_enabled { "HA" } else { "single" };
    format!("{}  {kind}: {}", partition.id, members.join(", "))
}
