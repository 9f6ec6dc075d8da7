//! `lunactl keystores`: AWS KMS external key stores this service serves as
//! an XKS proxy, and their SigV4 credentials (admin only). A credential's
//! secret is printed once, by the command that made it.

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::KeystoresCommand;
use crate::client::Client;
use crate::output::{self, Format, Kind};

const KEYSTORES: &str = "/api/v1/xks/keystores";

/// A keystore with its new credential, and what to do with the secret.
fn with_secret(answer: &Value, format: Format) -> String {
    let mut out = output::record(answer, format);
    if format == Format::Table {
        out.push_str(
            "The secret access key is shown this once: give it and the access key id to AWS KMS \
             (the external key store's proxy authentication credential).\n",
        );
    }
    out
}

pub(crate) fn run(client: &mut Client, command: KeystoresCommand, format: Format) -> Result<String> {
    match command {
        KeystoresCommand::Create {
            name,
            uri_path_prefix,
            region,
            partition,
        } => {
            let body = json!({"name": name, "uri_path_prefix": uri_path_prefix, "region": region, "partition_id": partition});
            let answer = client.call("POST", KEYSTORES, &[], Some(&body))?;
            Ok(with_secret(&answer, format))
        }
        KeystoresCommand::List => Ok(output::list(
            &client.call("GET", KEYSTORES, &[], None)?,
            Kind::Keystore,
            format,
        )),
        KeystoresCommand::Get { id } => Ok(output::record(&crate::get(client, KEYSTORES, &id)?, format)),
        KeystoresCommand::Rotate { id, overlap_hours } => {
            let body = match overlap_hours {
                Some(hours) => json!({"overlap_hours": hours}),
                None => json!({}),
            };
            let answer = client.call("POST", &format!("{KEYSTORES}/{id}/credentials"), &[], Some(&body))?;
            Ok(with_secret(&answer, format))
        }
        KeystoresCommand::Delete { id } => {
            crate::delete(client, KEYSTORES, &id)?;
            Ok(format!("keystore {id} deleted\n"))
        }
    }
}
