//! Connections and partitions: registering tokens with the service.

use std::sync::Arc;

use luna_domain::{Connection, ConnectionSpec, Member, Partition};
use luna_pkcs11::{Module, TokenError};
use luna_store::{AuditEntry, Store};
use secrecy::SecretString;
use uuid::Uuid;

use crate::error::RunnerError;

/// Registers a connection: every listed token must be present in the module
/// and the PIN must log in to each, else the request names the token that
/// failed. Serial numbers left out are filled in from the tokens. The members
/// of an HA group must be able to replicate (each has the mechanisms, and no
/// two share a serial number), which is judged before any PIN is tried.
/// `audit` is written with the connection.
pub fn register_connection(
    store: &Store,
    module: &Arc<Module>,
    spec: ConnectionSpec,
    audit: &AuditEntry,
) -> Result<Connection, RunnerError> {
    register_connection_idempotently(store, module, spec, None, audit)
}

/// `register_connection`, recording with the connection that `request` (a
/// create under an `Idempotency-Key`) made it.
pub fn register_connection_idempotently(
    store: &Store,
    module: &Arc<Module>,
    spec: ConnectionSpec,
    request: Option<&luna_domain::idempotency::IdempotentRequest>,
    audit: &AuditEntry,
) -> Result<Connection, RunnerError> {
    let mut members = Vec::with_capacity(spec.members.len());
    let mut tokens = Vec::with_capacity(spec.members.len());
    for member in &spec.members {
        let token = module
            .describe_token(&member.partition_label, member.serial_number.as_deref())
            .map_err(|source| refused(&member.partition_label, source))?;
        members.push(Member {
            hostname: member.hostname.clone(),
            partition_label: member.partition_label.clone(),
            serial_number: token.serial_number.clone(),
        });
        tokens.push(token);
    }
    if spec.ha_enabled {
        luna_domain::partition::check_distinct_serials(&members)?;
        if let Some(reason) = tokens.iter().find_map(|t| t.cannot_replicate()) {
            return Err(RunnerError::Invalid(format!(
                "{reason}; its tokens can each be registered without is_ha_enabled, their keys not replicated"
            )));
        }
    }
    for member in &members {
        module
            .open_token(
                &member.partition_label,
                Some(&member.serial_number),
                spec.password.clone(),
            )
            .map_err(|source| refused(&member.partition_label, source))?;
    }
    if let Some(so_pin) = &spec.so_password {
        // The members' SO PIN is used here, once, and dropped with `spec`.
        module
            .establish_cloning_domain(&members, so_pin)
            .map_err(|source| {
                let message = if source.is_pin_incorrect() {
                    "so_password does not log in to every partition as security officer".to_owned()
                } else {
                    format!("the cloning domain could not be established: {source}")
                };
                RunnerError::TokenRefused { message, source }
            })?;
        tracing::info!(members = members.len(), "cloning domain established");
    }
    let now = luna_store::now();
    let connection = Connection {
        id: Uuid::new_v4(),
        name: spec.name,
        description: spec.description,
        ha_enabled: spec.ha_enabled,
        remap_rsa_mechanisms: spec.remap_rsa_mechanisms,
        server_id: spec.server_id,
        last_check: None,
        products: spec.products,
        meta: spec.meta,
        members,
        created_at: now,
        updated_at: now,
    };
    store.insert_connection(&connection, &spec.password, request, audit)?;
    tracing::info!(connection = %connection.id, name = %connection.name, members = connection.members.len(), "connection registered");
    Ok(connection)
}

/// Adds a token to an HA connection: it must be present, able to replicate,
/// of a serial number no member has, and take the connection's PIN; with
/// `so_pin`, the cloning domain is established again across every member,
/// the new one included. The members' existing keys are not copied here
/// (a synchronize job does that). `audit` is written with the member.
pub fn add_member(
    store: &Store,
    module: &Arc<Module>,
    connection: &Connection,
    spec: luna_domain::MemberSpec,
    so_pin: Option<&SecretString>,
    audit: &AuditEntry,
) -> Result<Member, RunnerError> {
    if !connection.ha_enabled {
        return Err(RunnerError::Invalid(
            "only an HA connection (is_ha_enabled) takes more partitions".into(),
        ));
    }
    if connection.members.len() >= luna_domain::partition::MAX_MEMBERS {
        return Err(RunnerError::Invalid(format!(
            "an HA connection has at most {} partitions",
            luna_domain::partition::MAX_MEMBERS
        )));
    }
    let token = module
        .describe_token(&spec.partition_label, spec.serial_number.as_deref())
        .map_err(|source| refused(&spec.partition_label, source))?;
    if let Some(reason) = token.cannot_replicate() {
        return Err(RunnerError::Invalid(reason));
    }
    let member = Member {
        hostname: spec.hostname,
        partition_label: spec.partition_label,
        serial_number: token.serial_number.clone(),
    };
    if let Some(same) = connection
        .members
        .iter()
        .find(|m| m.serial_number == member.serial_number)
    {
        return Err(RunnerError::Conflict(format!(
            "the connection has partition {:?} (serial number {}) already",
            same.partition_label, same.serial_number
        )));
    }
    let mut members = connection.members.clone();
    members.push(member.clone());
    luna_domain::partition::check_distinct_serials(&members)?;
    let pin = store
        .connection_pin(connection.id)?
        .ok_or_else(|| RunnerError::NotFound(format!("connection {} does not exist", connection.id)))?;
    module
        .open_token(&member.partition_label, Some(&member.serial_number), pin)
        .map_err(|source| refused(&member.partition_label, source))?;
    if let Some(so_pin) = so_pin {
        module
            .establish_cloning_domain(&members, so_pin)
            .map_err(|source| RunnerError::TokenRefused {
                message: format!(
                    "the cloning domain could not be established with the new partition: {source}"
                ),
                source,
            })?;
    }
    if !store.add_connection_member(connection.id, &member, luna_store::now(), audit)? {
        return Err(RunnerError::NotFound(format!(
            "connection {} does not exist",
            connection.id
        )));
    }
    tracing::info!(connection = %connection.id, serial = %member.serial_number, "partition added to the connection");
    Ok(member)
}

/// One member's part in a test of a connection: `None` if it logged in.
#[derive(Debug)]
pub struct MemberTest {
    pub member: Member,
    pub error: Option<String>,
}

/// Logs in to each member now, with `pin`, as the service would (the token
/// found by label and serial, the PIN proven): what worked and what did not.
/// Nothing is kept open.
pub fn test_members(module: &Arc<Module>, members: &[Member], pin: &SecretString) -> Vec<MemberTest> {
    members
        .iter()
        .map(|member| {
            let serial = Some(member.serial_number.as_str()).filter(|s| !s.is_empty());
            // A token that dropped off and came back is seen only once the
            // module is initialised again, at its recovery pace; one this
            // process never listed (a made-up label, say) re-initialises
            // nothing here.
            if let Some(serial) = serial.filter(|s| module.has_listed(&member.partition_label, s)) {
                module.look_for(&member.partition_label, serial);
            }
            let error = module
                .open_token(&member.partition_label, serial, pin.clone())
                .err()
                .map(|source| refused(&member.partition_label, source).to_string());
            MemberTest {
                member: member.clone(),
                error,
            }
        })
        .collect()
}

/// How a test went, for the connection's record: ok only if every member
/// logged in; the failures named member by member.
pub fn check_of(tests: &[MemberTest], at: time::OffsetDateTime) -> luna_domain::ConnectionCheck {
    let failures: Vec<String> = tests
        .iter()
        // Each failure names its partition already.
        .filter_map(|t| t.error.clone())
        .collect();
    luna_domain::ConnectionCheck {
        ok: failures.is_empty(),
        at,
        error: (!failures.is_empty()).then(|| failures.join("; ")),
    }
}

fn refused(label: &str, source: TokenError) -> RunnerError {
    let message = match &source {
        TokenError::TokenNotFound { .. } | TokenError::AmbiguousToken { .. } => source.to_string(),
        _ if source.is_pin_incorrect() => {
            format!("the password does not log in to partition {label:?}")
        }
        _ => format!("partition {label:?} could not be opened: {source}"),
    };
    RunnerError::TokenRefused { message, source }
}

/// Registers a connection's token set as one partition (an HA group when the
/// connection is HA), and writes `audit` about it. `connection` is a name
/// or an id.
pub fn add_partition(store: &Store, connection: &str, audit: &AuditEntry) -> Result<Partition, RunnerError> {
    let found = match Uuid::parse_str(connection) {
        Ok(id) => store.get_connection(id)?,
        Err(_) => store.connection_by_name(connection)?,
    };
    let connection = found
        .ok_or_else(|| RunnerError::NotFound(format!("no connection is named or numbered {connection:?}")))?;
    let first = connection
        .members
        .first()
        .ok_or_else(|| RunnerError::Invalid("the connection lists no partitions".into()))?;
    let now = luna_store::now();
    let partition = Partition {
        id: Uuid::new_v4(),
        connection_id: connection.id,
        partition_label: first.partition_label.clone(),
        serial_number: first.serial_number.clone(),
        ha_enabled: connection.ha_enabled,
        remap_rsa_mechanisms: connection.remap_rsa_mechanisms,
        members: connection.members.clone(),
        created_at: now,
        updated_at: now,
    };
    store.insert_partition(&partition, audit)?;
    tracing::info!(partition = %partition.id, connection = %connection.id, "partition added");
    Ok(partition)
}
