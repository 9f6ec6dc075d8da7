//! Rows as Diesel reads and writes them, and their conversion to domain values.

use std::collections::BTreeMap;

use diesel::prelude::*;
use luna_domain::{
    AttributeSet, Connection, ConnectionCheck, HsmServer, Job, JobData, JobLifecycle, Key, KeyData,
    KeyLifecycle, Member, Operation, OperationState, Partition, Product, ScheduledBy, ServerCertificate,
    StoredOperation,
};
use uuid::Uuid;

use crate::codec::{from_json, from_micros, json_map, micros, optional_wire, to_json, uuid, wire};
use crate::error::Result;
use crate::schema::{
    connection_members, connections, hsm_servers, jobs, keys, operations, partitions, users,
};

mod key_rows;
mod schedule_rows;

pub use key_rows::{KeyChange, KeyRow};
pub use schedule_rows::{FiringRow, ScheduleRow};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = operations)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    pub target_id: String,
    pub payload: String,
    pub state: String,
    pub attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub partition_id: Option<String>,
    pub requested_by_id: Option<String>,
    pub requested_by: Option<String>,
    pub request_id: Option<String>,
}

impl OperationRow {
    pub fn from_domain(op: &Operation) -> Result<OperationRow> {
        let payload = to_json("operation payload", &op.payload)?;
        Ok(OperationRow {
            id: op.id.to_string(),
            // In its own column for metrics and queries.
            kind: op.payload.kind_name().into(),
            target_id: op.payload.target().to_string(),
            payload,
            state: op.state().as_str().into(),
            attempts: i32::try_from(op.attempts()).unwrap_or(i32::MAX),
            lease_owner: op.lease_owner().map(str::to_owned),
            lease_expires_at: op.lease_expires_at().map(micros),
            last_error: op.last_error().map(str::to_owned),
            created_at: micros(op.created_at),
            updated_at: micros(op.updated_at),
            partition_id: op.partition_id.map(|id| id.to_string()),
            requested_by_id: op.requested_by.as_ref().map(|r| r.user_id.clone()),
            requested_by: op.requested_by.as_ref().map(|r| r.username.clone()),
            request_id: op.requested_by.as_ref().map(|r| r.request_id.clone()),
        })
    }

    pub fn into_domain(self) -> Result<Operation> {
        Operation::restore(StoredOperation {
            id: uuid("operation id", &self.id)?,
            payload: from_json("operation payload", &self.payload)?,
            state: wire::<OperationState>("operation state", &self.state)?,
            attempts: u32::try_from(self.attempts)
                .map_err(|e| crate::StoreError::corrupt("operation attempts", e))?,
            lease_owner: self.lease_owner,
            lease_expires_at: self
                .lease_expires_at
                .map(|t| from_micros("operation lease_expires_at", t))
                .transpose()?,
            last_error: self.last_error,
            created_at: from_micros("operation created_at", self.created_at)?,
            updated_at: from_micros("operation updated_at", self.updated_at)?,
            partition_id: self
                .partition_id
                .as_deref()
                .map(|id| uuid("operation partition_id", id))
                .transpose()?,
            requested_by: match (self.requested_by_id, self.requested_by, self.request_id) {
                (Some(user_id), Some(username), Some(request_id)) => Some(luna_domain::Requester {
                    user_id,
                    username,
                    request_id,
                }),
                (None, None, None) => None,
                _ => {
                    return Err(crate::StoreError::corrupt(
                        "operation requested_by",
                        "its user id, name and request id are not all set or all unset",
                    ))
                }
            },
        })
        .map_err(|e| crate::StoreError::corrupt("operation", e))
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: String,
    pub job_type: String,
    pub partitions: String,
    pub overall_status: String,
    pub abort_requested: bool,
    pub detailed_status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub schedule_id: Option<String>,
    pub schedule_name: Option<String>,
}

impl JobRow {
    pub fn from_domain(job: &Job) -> Result<JobRow> {
        let detailed: BTreeMap<String, String> = job
            .detailed_status
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(JobRow {
            id: job.id.to_string(),
            job_type: job.job_type.as_str().into(),
            partitions: to_json("job partitions", &job.partitions)?,
            overall_status: job.lifecycle().status().as_str().into(),
            abort_requested: job.lifecycle().cancel_requested(),
            detailed_status: json_map(&detailed),
            created_at: micros(job.created_at),
            updated_at: micros(job.updated_at),
            completed_at: job.completed_at.map(micros),
            schedule_id: job.scheduled_by.as_ref().map(|s| s.id.to_string()),
            schedule_name: job.scheduled_by.as_ref().map(|s| s.name.clone()),
        })
    }

    pub fn into_domain(self) -> Result<Job> {
        let detailed: BTreeMap<String, String> = from_json("job detailed_status", &self.detailed_status)?;
        Ok(Job::restored(
            JobData {
                id: uuid("job id", &self.id)?,
                job_type: wire("job type", &self.job_type)?,
                partitions: from_json::<Vec<Uuid>>("job partitions", &self.partitions)?,
                detailed_status: detailed
                    .into_iter()
                    .map(|(k, v)| Ok((uuid("job detailed_status", &k)?, v)))
                    .collect::<Result<_>>()?,
                created_at: from_micros("job created_at", self.created_at)?,
                updated_at: from_micros("job updated_at", self.updated_at)?,
                completed_at: self
                    .completed_at
                    .map(|t| from_micros("job completed_at", t))
                    .transpose()?,
                scheduled_by: match (self.schedule_id, self.schedule_name) {
                    (Some(id), Some(name)) => Some(ScheduledBy {
                        id: uuid("job schedule_id", &id)?,
                        name,
                    }),
                    _ => None,
                },
            },
            JobLifecycle::restore(
                wire("job overall_status", &self.overall_status)?,
                self.abort_requested,
            )
            .map_err(|e| crate::StoreError::corrupt("job lifecycle", e))?,
        ))
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = connections)]
pub struct ConnectionRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub is_ha_enabled: bool,
    pub remap_rsa_mechanisms: bool,
    pub pin_ciphertext: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
    pub server_id: Option<String>,
    pub last_connection_ok: Option<bool>,
    pub last_connection_at: Option<i64>,
    pub last_connection_error: Option<String>,
    pub products: String,
    pub meta: Option<String>,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = connection_members)]
pub struct MemberRow {
    pub connection_id: String,
    pub position: i32,
    pub hostname: String,
    pub partition_label: String,
    pub serial_number: String,
}

impl MemberRow {
    pub fn into_domain(self) -> Member {
        Member {
            hostname: self.hostname,
            partition_label: self.partition_label,
            serial_number: self.serial_number,
        }
    }
}

impl ConnectionRow {
    pub fn into_domain(self, members: Vec<Member>) -> Result<Connection> {
        Ok(Connection {
            id: uuid("connection id", &self.id)?,
            name: self.name,
            description: self.description,
            ha_enabled: self.is_ha_enabled,
            remap_rsa_mechanisms: self.remap_rsa_mechanisms,
            server_id: self
                .server_id
                .as_deref()
                .map(|id| uuid("connection server_id", id))
                .transpose()?,
            last_check: match (self.last_connection_ok, self.last_connection_at) {
                (Some(ok), Some(at)) => Some(ConnectionCheck {
                    ok,
                    at: from_micros("connection last_connection_at", at)?,
                    error: self.last_connection_error,
                }),
                _ => None,
            },
            products: self
                .products
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            meta: self.meta,
            members,
            created_at: from_micros("connection created_at", self.created_at)?,
            updated_at: from_micros("connection updated_at", self.updated_at)?,
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = partitions)]
pub struct PartitionRow {
    pub id: String,
    pub connection_id: String,
    pub partition_label: String,
    pub serial_number: String,
    pub ha_enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl PartitionRow {
    pub fn from_domain(p: &Partition) -> PartitionRow {
        PartitionRow {
            id: p.id.to_string(),
            connection_id: p.connection_id.to_string(),
            partition_label: p.partition_label.clone(),
            serial_number: p.serial_number.clone(),
            ha_enabled: p.ha_enabled,
            created_at: micros(p.created_at),
            updated_at: micros(p.updated_at),
        }
    }

    /// The partition, given its connection's remap policy and members.
    pub fn into_domain(self, remap_rsa_mechanisms: bool, members: Vec<Member>) -> Result<Partition> {
        Ok(Partition {
            id: uuid("partition id", &self.id)?,
            connection_id: uuid("partition connection_id", &self.connection_id)?,
            partition_label: self.partition_label,
            serial_number: self.serial_number,
            ha_enabled: self.ha_enabled,
            remap_rsa_mechanisms,
            members,
            created_at: from_micros("partition created_at", self.created_at)?,
            updated_at: from_micros("partition updated_at", self.updated_at)?,
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub user_groups: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = hsm_servers)]
pub struct ServerRow {
    pub id: String,
    pub hostname: String,
    pub description: String,
    pub certificate_pem: String,
    pub certificate_subject: String,
    pub certificate_issuer: String,
    pub certificate_not_before: i64,
    pub certificate_not_after: i64,
    pub certificate_sha256: String,
    pub products: String,
    pub meta: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ServerRow {
    pub fn from_domain(server: &HsmServer) -> ServerRow {
        ServerRow {
            id: server.id.to_string(),
            hostname: server.hostname.clone(),
            description: server.description.clone(),
            certificate_pem: server.certificate.pem.clone(),
            certificate_subject: server.certificate.subject.clone(),
            certificate_issuer: server.certificate.issuer.clone(),
            certificate_not_before: micros(server.certificate.not_before),
            certificate_not_after: micros(server.certificate.not_after),
            certificate_sha256: server.certificate.sha256_fingerprint.clone(),
            products: server
                .products
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(","),
            meta: server.meta.clone(),
            created_at: micros(server.created_at),
            updated_at: micros(server.updated_at),
        }
    }

    pub fn into_domain(self) -> Result<HsmServer> {
        let products = self
            .products
            .split(',')
            .map(|p| wire("server product", p))
            .collect::<Result<Vec<Product>>>()?;
        Ok(HsmServer {
            id: uuid("server id", &self.id)?,
            hostname: self.hostname,
            description: self.description,
            certificate: ServerCertificate {
                pem: self.certificate_pem,
                subject: self.certificate_subject,
                issuer: self.certificate_issuer,
                not_before: from_micros("server certificate not_before", self.certificate_not_before)?,
                not_after: from_micros("server certificate not_after", self.certificate_not_after)?,
                sha256_fingerprint: self.certificate_sha256,
            },
            products,
            meta: self.meta,
            created_at: from_micros("server created_at", self.created_at)?,
            updated_at: from_micros("server updated_at", self.updated_at)?,
        })
    }
}
