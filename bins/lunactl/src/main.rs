//! lunactl: the luna-cckm command line. `lunactl login`, then a command for
//! every endpoint; `--wait` follows an operation or job to its end.

mod audit;
mod cli;
mod client;
mod keystores;
mod list_args;
mod output;
mod schedules;
mod session;
mod wait;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser as _;
use luna_domain::JobStatus;
use serde_json::{json, Value};

use cli::{
    AuditCommand, Cli, Command, ConnectionsCommand, JobCommand, KeysCommand, PartitionsCommand,
    ServersCommand, UsersCommand,
};
use client::{Client, Target};
use list_args::ListArgs;
use output::{Format, Kind};

const KEYS: &str = "/api/v1/cckm/hsm/luna/keys";
const PARTITIONS: &str = "/api/v1/cckm/hsm/luna/partitions";
const CONNECTIONS: &str = "/api/v1/connectionmgmt/services/luna-network/connections";
const SERVERS: &str = "/api/v1/connectionmgmt/services/luna-network/servers";
const USERS: &str = "/api/v1/usermgmt/users";
const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(text) => {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            // The server's sentence and its context, never a backtrace.
            let _ = writeln!(std::io::stderr(), "lunactl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A secret from an environment variable; else typed at the terminal, not
/// echoed; else the next line of stdin (a pipe). Never a flag, which `ps`
/// would show.
fn secret(variable: &str, what: &str) -> Result<String> {
    if let Ok(value) = std::env::var(variable) {
        return Ok(value);
    }
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: ")).context("reading from the terminal")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if line.is_empty() {
        bail!("no {what}: set {variable} or give it on stdin");
    }
    Ok(line)
}

/// A new secret, as `secret` reads one; typed at a terminal, it is asked
/// twice (it is not echoed, so a typo would set a secret nobody knows).
fn new_secret(variable: &str, what: &str) -> Result<String> {
    let first = secret(variable, what)?;
    if std::env::var(variable).is_err() && std::io::stdin().is_terminal() {
        let again =
            rpassword::prompt_password(format!("{what}, again: ")).context("reading from the terminal")?;
        if again != first {
            bail!("the two entries of the {what} differ; nothing was changed");
        }
    }
    Ok(first)
}

fn run(cli: Cli) -> Result<String> {
    let saved = session::load()?;
    let target = Target {
        server: cli
            .server
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        ca_file: cli
            .ca_file
            .clone()
            .or_else(|| saved.as_ref().and_then(|s| s.ca_file.clone())),
        insecure: cli.insecure,
    };
    let mut client = Client::new(&target, saved)?;
    let format = cli.output;
    match cli.command {
        Command::Login { username } => {
            let password = secret("LUNACTL_PASSWORD", "password")?;
            client.login(&target, &username, &password)?;
            Ok(format!(
                "logged in to {} as {username}; the session is in {}\n",
                target.server,
                session::path()?.display()
            ))
        }
        Command::Logout => client.logout(),
        Command::Health => Ok(output::record(
            &client.call_open("GET", "/api/v1/healthz", None)?,
            format,
        )),
        Command::Keys(command) => keys(&mut client, command, format),
        Command::Refresh(command) => job(&mut client, "/api/v1/cckm/hsm/luna/refresh", command, format),
        Command::Synchronize(command) => {
            job(&mut client, "/api/v1/cckm/hsm/luna/synchronize", command, format)
        }
        Command::Schedules(command) => schedules::run(&mut client, command, format),
        Command::Keystores(command) => keystores::run(&mut client, command, format),
        Command::Partitions(command) => partitions(&mut client, command, format),
        Command::Servers(command) => servers(&mut client, command, format),
        Command::Connections(command) => connections(&mut client, command, format),
        Command::Users(command) => users(&mut client, command, format),
        Command::Audit(command) => match command {
            AuditCommand::List(list) => {
                list_page(&mut client, "/api/v1/audit/records", &list, Kind::Audit, format)
            }
            AuditCommand::Tail { lines, interval_ms } => audit::tail(
                &mut client,
                lines,
                std::time::Duration::from_millis(interval_ms),
                format,
            ),
            AuditCommand::Verify => {
                let check = client.call("GET", "/api/v1/audit/verify", &[], None)?;
                if check["intact"] != json!(true) {
                    bail!("the audit chain is broken at record {}", check["broken_at"]);
                }
                Ok(output::record(&check, format))
            }
        },
    }
}

/// The record an async request answered, or, with `--wait`, the final one.
fn key_answer(client: &mut Client, answer: Value, wait: bool, format: Format) -> Result<String> {
    if !wait {
        return Ok(output::record(&answer, format));
    }
    let id = answer["id"]
        .as_str()
        .context("the server's answer has no id")?
        .to_owned();
    Ok(output::record(&wait::key(client, &id)?, format))
}

fn keys(client: &mut Client, command: KeysCommand, format: Format) -> Result<String> {
    match command {
        KeysCommand::Create {
            partition_id,
            mechanism,
            size,
            label,
            attributes,
            wait,
        } => {
            let body = json!({
                "partition_id": partition_id,
                "mechanism": mechanism,
                "size": size,
                "label": label,
                "attributes": attributes,
            });
            let answer = client.call("POST", KEYS, &[], Some(&body))?;
            key_answer(client, answer, wait, format)
        }
        KeysCommand::List(list) => list_page(client, KEYS, &list, Kind::Key, format),
        KeysCommand::Get { id } => Ok(output::record(&get(client, KEYS, &id)?, format)),
        KeysCommand::Update { id, changes, wait } => {
            let attributes = changes
                .iter()
                .map(|change| attribute_change(change))
                .collect::<Result<Vec<_>>>()?;
            let answer = client.call(
                "PATCH",
                &format!("{KEYS}/{id}"),
                &[],
                Some(&json!({ "attributes": attributes })),
            )?;
            key_answer(client, answer, wait, format)
        }
        KeysCommand::Replicate { id, wait } => {
            let answer = client.call("POST", &format!("{KEYS}/{id}/replicate"), &[], None)?;
            key_answer(client, answer, wait, format)
        }
        KeysCommand::Forget { id } => {
            delete(client, KEYS, &id)?;
            Ok(format!(
                "key {id}: its records are gone from CCKM; the tokens were not touched\n"
            ))
        }
        KeysCommand::Destroy { id, wait } => {
            let answer = client.call("POST", &format!("/api/v1/cckm/hsm/luna/{id}/delete"), &[], None)?;
            key_answer(client, answer, wait, format)
        }
        KeysCommand::Delete { .. } => bail!(
            "there is no `keys delete`: `lunactl keys forget ID` drops the key's records here and \
             leaves its objects on the tokens; `lunactl keys destroy ID` destroys its objects on the tokens"
        ),
    }
}

// What every collection has: a list, a record by id, a delete by id.

fn list_page<F>(
    client: &mut Client,
    collection: &str,
    args: &ListArgs<F>,
    kind: Kind,
    format: Format,
) -> Result<String> {
    Ok(output::list(
        &client.call("GET", collection, &args.query, None)?,
        kind,
        format,
    ))
}

fn get(client: &mut Client, collection: &str, id: &str) -> Result<Value> {
    client.call("GET", &format!("{collection}/{id}"), &[], None)
}

fn delete(client: &mut Client, collection: &str, id: &str) -> Result<()> {
    client
        .call("DELETE", &format!("{collection}/{id}"), &[], None)
        .map(drop)
}

/// `CKA_SIGN=true` as the API's `{"type": "CKA_SIGN", "value": true}`.
fn attribute_change(change: &str) -> Result<Value> {
    let Some((name, value)) = change.split_once('=') else {
        bail!("--set {change:?}: write it as CKA_NAME=true or CKA_NAME=false");
    };
    let value = match value {
        "true" => true,
        "false" => false,
        other => bail!("--set {name}={other}: the value must be true or false"),
    };
    Ok(json!({"type": name, "value": value}))
}

fn job(client: &mut Client, collection: &str, command: JobCommand, format: Format) -> Result<String> {
    let answer = match command {
        JobCommand::Start {
            partitions,
            all,
            wait,
        } => {
            let body = if all {
                json!({"synchronize_all": true})
            } else {
                json!({ "partitions": partitions })
            };
            let job = client.call("POST", collection, &[], Some(&body))?;
            if !wait {
                return Ok(output::record(&job, format));
            }
            let id = job["id"]
                .as_str()
                .context("the server's answer has no id")?
                .to_owned();
            match wait::job(client, collection, &id)? {
                (JobStatus::Completed, job) => job,
                (status, job) => bail!("job {id} {}: {}", status.as_str(), job["detailed_status"]),
            }
        }
        JobCommand::List(list) => return list_page(client, collection, &list, Kind::Job, format),
        JobCommand::Get { id } => get(client, collection, &id)?,
        JobCommand::Cancel { id, wait } => {
            let job = client.call("POST", &format!("{collection}/{id}/cancel"), &[], None)?;
            if !wait {
                return Ok(output::record(&job, format));
            }
            // Cancelled is what was asked; a job that ended first ended on its own terms.
            match wait::job(client, collection, &id)? {
                (JobStatus::Cancelled | JobStatus::Completed, job) => job,
                (status, job) => bail!("job {id} {}: {}", status.as_str(), job["detailed_status"]),
            }
        }
    };
    Ok(output::record(&answer, format))
}

fn partitions(client: &mut Client, command: PartitionsCommand, format: Format) -> Result<String> {
    let answer = match command {
        PartitionsCommand::Add { connection } => client.call(
            "POST",
            "/api/v1/cckm/hsm/luna/add-partition",
            &[],
            Some(&json!({ "connection": connection })),
        )?,
        PartitionsCommand::List(list) => {
            return list_page(client, PARTITIONS, &list, Kind::Partition, format)
        }
        PartitionsCommand::Get { id } => get(client, PARTITIONS, &id)?,
        PartitionsCommand::Forget { id } => {
            delete(client, PARTITIONS, &id)?;
            return Ok(format!(
                "partition {id}: forgotten here; the tokens are untouched\n"
            ));
        }
        PartitionsCommand::Delete { .. } => bail!(
            "there is no `partitions delete`: `lunactl partitions forget ID` forgets the partition \
             and its keys here; the tokens are not touched"
        ),
    };
    Ok(output::record(&answer, format))
}

/// `LABEL:SERIAL[@HOST]` as a connection member.
fn member(text: &str) -> Result<Value> {
    let (partition, hostname) = text.split_once('@').unwrap_or((text, ""));
    let Some((label, serial)) = partition.split_once(':') else {
        bail!("--member {text:?}: write it as LABEL:SERIAL or LABEL:SERIAL@HOST");
    };
    Ok(json!({"partition_label": label, "serial_number": serial, "hostname": hostname}))
}

fn connections(client: &mut Client, command: ConnectionsCommand, format: Format) -> Result<String> {
    let answer = match command {
        ConnectionsCommand::Create {
            name,
            description,
            members,
            ha,
            remap_rsa_mechanisms,
        } => {
            let members = members.iter().map(|m| member(m)).collect::<Result<Vec<_>>>()?;
            let mut body = json!({
                "name": name,
                "description": description,
                "password": secret("LUNACTL_PIN", "partition PIN")?,
                "is_ha_enabled": ha,
                "remap_rsa_mechanisms": remap_rsa_mechanisms,
                "partitions": members,
            });
            if let Ok(so_pin) = std::env::var("LUNACTL_SO_PIN") {
                body["so_password"] = json!(so_pin);
            }
            client.call("POST", CONNECTIONS, &[], Some(&body))?
        }
        ConnectionsCommand::List(list) => {
            return list_page(client, CONNECTIONS, &list, Kind::Connection, format)
        }
        ConnectionsCommand::Get { id } => get(client, CONNECTIONS, &id)?,
        ConnectionsCommand::Delete { id } => {
            delete(client, CONNECTIONS, &id)?;
            return Ok(format!("connection {id} deleted\n"));
        }
        ConnectionsCommand::Test { id } => {
            let tested = client.call("POST", &format!("{CONNECTIONS}/{}/test", id), &[], None)?;
            if tested["connection_ok"] != json!(true) {
                let failures: Vec<String> = tested["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["error"].as_str().map(str::to_owned))
                    .collect();
                bail!("the connection test failed: {}", failures.join("; "));
            }
            tested
        }
        ConnectionsCommand::Update {
            id,
            description,
            rotate_pin,
        } => {
            let mut body = json!({});
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            if rotate_pin {
                body["password"] = json!(new_secret("LUNACTL_PIN", "the partitions' new PIN")?);
            }
            client.call("PATCH", &format!("{CONNECTIONS}/{}", id), &[], Some(&body))?
        }
        ConnectionsCommand::AddMember { id, member: spec } => {
            let mut body = member(&spec)?;
            if let Ok(so_pin) = std::env::var("LUNACTL_SO_PIN") {
                body["so_password"] = json!(so_pin);
            }
            client.call(
                "POST",
                &format!("{CONNECTIONS}/{}/partitions", id),
                &[],
                Some(&body),
            )?
        }
        ConnectionsCommand::RemoveMember { id, serial } => {
            delete(client, &format!("{CONNECTIONS}/{}/partitions", id), &serial)?;
            return Ok(format!("partition {serial} removed from connection {id}\n"));
        }
    };
    Ok(output::record(&answer, format))
}

fn servers(client: &mut Client, command: ServersCommand, format: Format) -> Result<String> {
    let answer = match command {
        ServersCommand::Add {
            hostname,
            certificate,
            description,
        } => {
            let pem = std::fs::read_to_string(&certificate)
                .with_context(|| format!("reading the certificate {}", certificate.display()))?;
            let body = json!({"hostname": hostname, "hsm_certificate": pem, "description": description});
            client.call("POST", SERVERS, &[], Some(&body))?
        }
        ServersCommand::List(list) => return list_page(client, SERVERS, &list, Kind::Server, format),
        ServersCommand::Get { id } => get(client, SERVERS, &id)?,
        ServersCommand::Delete { id } => {
            delete(client, SERVERS, &id)?;
            return Ok(format!("server {id} deleted\n"));
        }
    };
    Ok(output::record(&answer, format))
}

fn users(client: &mut Client, command: UsersCommand, format: Format) -> Result<String> {
    let answer = match command {
        UsersCommand::Create { username, groups } => {
            let password = new_secret("LUNACTL_NEW_PASSWORD", "the new user's password")?;
            client.call(
                "POST",
                USERS,
                &[],
                Some(&json!({"username": username, "password": password, "groups": groups})),
            )?
        }
        UsersCommand::List(list) => return list_page(client, USERS, &list, Kind::User, format),
        UsersCommand::Get { id } => get(client, USERS, &id)?,
        UsersCommand::Delete { id } => {
            delete(client, USERS, &id)?;
            return Ok(format!("user {id} deleted\n"));
        }
        UsersCommand::Passwd { id: Some(id), .. } => {
            let password = new_secret("LUNACTL_NEW_PASSWORD", "the new password")?;
            client.call(
                "PATCH",
                &format!("{USERS}/{id}"),
                &[],
                Some(&json!({"password": password})),
            )?
        }
        UsersCommand::Passwd { username, id: None } => {
            let Some(username) = username.or_else(|| client.username().map(str::to_owned)) else {
                bail!("whose password? give --username (this login was saved without one)");
            };
            let password = secret("LUNACTL_PASSWORD", "current password")?;
            let new_password = new_secret("LUNACTL_NEW_PASSWORD", "new password")?;
            client.call_open(
                "PATCH",
                "/api/v1/auth/changepw",
                Some(&json!({"username": username, "password": password, "new_password": new_password})),
            )?;
            return Ok(format!(
                "the password of {username} is changed and its sessions have ended; run lunactl login again\n"
            ));
        }
        UsersCommand::AddGroup { id, group } => client.call("POST", &group_member(&group, &id), &[], None)?,
        UsersCommand::RemoveGroup { id, group } => {
            client.call("DELETE", &group_member(&group, &id), &[], None)?;
            return Ok(format!("user {id} is no longer in {group}\n"));
        }
    };
    Ok(output::record(&answer, format))
}

/// `/api/v1/usermgmt/groups/{group}/users/{id}`, the group name escaped
/// (`CCKM Admins` has a space).
fn group_member(group: &str, id: &str) -> String {
    let group: String = group
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("/api/v1/usermgmt/groups/{group}/users/{id}")
}
