//! The JSON bodies, with the reference's field names and types. Only this
//! module knows how a domain record looks on the wire.

use luna_runner::QueueState;
use std::collections::BTreeMap;

use luna_domain::{Connection, Key, Mechanism, Member, Partition};
use luna_pkcs11::{Reachability, TokenInfo};
use luna_store::{AuditRecord, StoredUser};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// The CipherTrust identity fields every resource carries.
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub account: String,
    pub application: String,
    pub dev_account: String,
}

impl Default for Tenancy {
    /// The reference's values.
    fn default() -> Self {
        Tenancy {
            account: "kylo:kylo:admin:accounts:kylo".into(),
            application: "ncryptify:gemalto:admin:apps:kylo".into(),
            dev_account: "ncryptify:gemalto:admin:accounts:gemalto".into(),
        }
    }
}

/// RFC 3339 in UTC with `Z`, and as many fractional digits as the instant
/// needs (trailing zeros dropped): the reference's own spelling, as in
/// `"2020-12-14T11:00:22.54049Z"`. Only a year before 0 (a corrupt record)
/// cannot be written so; it is shown as `time` writes it rather than hidden.
pub fn timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| utc.to_string())
}

/// An instant of this process's clock (not a stored one), as `timestamp`
/// writes stored instants: to the microsecond, as the database keeps them.
pub fn wall_clock(at: std::time::SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    let micros = at.nanosecond() / 1_000 * 1_000;
    timestamp(at.replace_nanosecond(micros).unwrap_or(at))
}

/// The fields every CipherTrust resource body opens with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resource {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub application: String,
    #[serde(rename = "devAccount")]
    pub dev_account: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl Resource {
    /// `uri` is `kylo:kylo:cckm:<kind>:<id>`.
    fn new(
        kind: &str,
        id: Uuid,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
        tenancy: &Tenancy,
    ) -> Resource {
        Resource {
            id: id.to_string(),
            uri: format!("kylo:kylo:cckm:{kind}:{id}"),
            account: tenancy.account.clone(),
            application: tenancy.application.clone(),
            dev_account: tenancy.dev_account.clone(),
            created_at: timestamp(created_at),
            updated_at: timestamp(updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    #[serde(flatten)]
    pub resource: Resource,
    pub partition_id: String,
    pub partition_label: String,
    pub status: &'static str,
    pub operation: &'static str,
    pub operation_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_error: Option<String>,
    pub algorithm: &'static str,
    pub object_type: &'static str,
    pub mechanism: &'static str,
    /// The mechanism the token ran, when a remap replaced the requested one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_mechanism: Option<&'static str>,
    pub size: u32,
    pub label: String,
    pub attributes: Vec<&'static str>,
    pub object_uid: String,
    pub sha_256_fingerprint: String,
    pub replication_info: BTreeMap<String, String>,
    pub replicated: bool,
    pub byok_key: bool,
    /// The other half of an RSA pair, in create and replicate answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub links: Option<Box<KeyView>>,
    pub origin: &'static str,
    pub modulus: String,
    pub exponent: u64,
    pub link_id: String,
    pub ha_enabled: bool,
}

impl KeyView {
    pub fn new(key: &Key, tenancy: &Tenancy) -> KeyView {
        let life = &key.lifecycle();
        // As the reference shows: algorithm, object type and link are blank until the objects exist.
        let made = life.status() != luna_domain::KeyStatus::InProgress;
        KeyView {
            resource: Resource::new("luna-keys", key.id, key.created_at, key.updated_at, tenancy),
            partition_id: key.partition_id.to_string(),
            partition_label: key.partition_label.clone(),
            status: life.status().as_str(),
            operation: life.operation().as_str(),
            operation_status: life.operation_status().wire(life.operation()),
            operation_error: life.operation_error().map(str::to_owned),
            algorithm: key.algorithm.filter(|_| made).map_or("", |a| a.as_str()),
            object_type: key.object_type.filter(|_| made).map_or("", |t| t.as_str()),
            mechanism: key.mechanism.map_or("", |m| m.as_str()),
            generation_mechanism: key.generated_with.map(|m| m.as_str()),
            size: key.size,
            label: key.label.clone(),
            attributes: key.attributes.names(),
            object_uid: if made {
                key.object_uid.clone()
            } else {
                String::new()
            },
            sha_256_fingerprint: key.sha_256_fingerprint.clone(),
            replication_info: key.replication_info.clone(),
            replicated: key.replicated,
            byok_key: key.byok_key,
            links: None,
            origin: key.origin.as_str(),
            modulus: key.modulus.clone(),
            exponent: key.exponent,
            link_id: key
                .link_id
                .filter(|_| made)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            ha_enabled: key.ha_enabled,
        }
    }

    /// A key with its linked half under `links`, as create and replicate answer.
    pub fn with_link(key: &Key, linked: Option<&Key>, tenancy: &Tenancy) -> KeyView {
        KeyView {
            links: linked.map(|l| Box::new(KeyView::new(l, tenancy))),
            ..KeyView::new(key, tenancy)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub partition_label: String,
    pub serial_number: String,
    pub hostname: String,
    /// What the member's token says of itself (one partition's answer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<MemberTokenView>,
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> Self {
        MemberView {
            partition_label: m.partition_label.clone(),
            serial_number: m.serial_number.clone(),
            hostname: m.hostname.clone(),
            token: None,
        }
    }
}

/// A member's token as this instance finds it: what it says of itself
/// (asked once, when first opened) and whether it answers now.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberTokenView {
    /// False while the token cannot be found or does not answer; `error` says why.
    pub reachable: bool,
    pub manufacturer: String,
    pub model: String,
    /// The mechanisms replication needs that the token lacks.
    pub missing_for_replication: Vec<String>,
    /// Why the token is not reachable now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when the token has been away (a token this instance uses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<String>,
    /// Why the token was last found unreachable, kept after it came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How many times the token came back after being away, in this instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recoveries: Option<u64>,
}

impl MemberTokenView {
    /// `described`: what the token says of itself, or why it could not be
    /// asked; `reachability`: for a token this instance uses, whether it answers.
    pub fn new(described: Result<&TokenInfo, &str>, reachability: Option<&Reachability>) -> MemberTokenView {
        let away = reachability.and_then(|r| r.away_since);
        let mut view = match described {
            Ok(info) => MemberTokenView {
                reachable: away.is_none(),
                manufacturer: info.manufacturer.clone(),
                model: info.model.clone(),
                missing_for_replication: info
                    .missing_for_replication()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                error: None,
                unreachable_since: None,
                last_error: None,
                recoveries: None,
            },
            Err(reason) => MemberTokenView {
                reachable: false,
                manufacturer: String::new(),
                model: String::new(),
                missing_for_replication: Vec::new(),
                error: Some(reason.to_owned()),
                unreachable_since: None,
                last_error: None,
                recoveries: None,
            },
        };
        if let Some(reachability) = reachability {
            view.unreachable_since = away.map(wall_clock);
            view.last_error = reachability.last_error.clone();
            view.recoveries = Some(reachability.recoveries);
            if away.is_some() {
                view.error = reachability.last_error.clone();
            }
        }
        view
    }
}

/// What a create with `mechanism` does on a partition: the mechanism its
/// token runs (the same, or a remap), or why it is refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct MechanismView {
    pub mechanism: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_with: Option<String>,
    pub remapped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl MechanismView {
    /// Every mechanism of the reference, as `token` would generate it.
    pub fn plan(token: &TokenInfo, remap: bool) -> Vec<MechanismView> {
        Mechanism::ALL
            .iter()
            .map(|&requested| match token.generation_mechanism(requested, remap) {
                Ok(used) => MechanismView {
                    mechanism: requested.to_string(),
                    generated_with: Some(used.to_string()),
                    remapped: used != requested,
                    refused: None,
                },
                Err(reason) => MechanismView {
                    mechanism: requested.to_string(),
                    generated_with: None,
                    remapped: false,
                    refused: Some(reason.to_string()),
                },
            })
            .collect()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub partition_label: String,
    pub serial_number: String,
    pub connection_id: String,
    pub ha_enabled: bool,
    pub members: Vec<MemberView>,
    /// What a create of each mechanism does here, as the first member's
    /// token answers (one partition's answer only, when its token is reachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanisms: Option<Vec<MechanismView>>,
    /// The work waiting for its tokens.
    pub queue: QueueView,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

/// The work waiting for a partition's tokens (this project's addition).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Key operations queued, running or waiting for a token that is away.
    pub depth: i64,
    /// Operations leaving the queue per second, lately (every instance's work).
    pub drain_per_second: f64,
    /// Past this depth, creates are refused (429) until it drains.
    pub limit: i64,
}

impl From<&QueueState> for QueueView {
    fn from(queue: &QueueState) -> QueueView {
        QueueView {
            depth: queue.depth,
            // Tenths: a rate read over a few seconds says no more.
            drain_per_second: (queue.drain_per_second * 10.0).round() / 10.0,
            limit: queue.limit,
        }
    }
}

impl PartitionView {
    pub fn new(p: &Partition, tenancy: &Tenancy, queue: &QueueState) -> PartitionView {
        PartitionView {
            id: p.id.to_string(),
            uri: format!("kylo:kylo:cckm:luna-partitions:{}", p.id),
            account: tenancy.account.clone(),
            partition_label: p.partition_label.clone(),
            serial_number: p.serial_number.clone(),
            connection_id: p.connection_id.to_string(),
            ha_enabled: p.ha_enabled,
            members: p.members.iter().map(MemberView::from).collect(),
            mechanisms: None,
            queue: QueueView::from(queue),
            created_at: timestamp(p.created_at),
            updated_at: timestamp(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub name: String,
    pub description: String,
    pub is_ha_enabled: bool,
    pub remap_rsa_mechanisms: bool,
    /// The registered HSM server its partitions are on, if one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Whether its last test logged in to every member (absent before one).
    pub last_connection_ok: Option<bool>,
    pub last_connection_at: Option<String>,
    /// What failed in its last test, member by member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_connection_error: Option<String>,
    pub products: Vec<String>,
    /// The client's own data, as it was given.
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    pub partitions: Vec<MemberView>,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl ConnectionView {
    pub fn new(c: &Connection, tenancy: &Tenancy) -> ConnectionView {
        ConnectionView {
            id: c.id.to_string(),
            uri: format!("kylo:kylo:connectionmgmt:connections:{}", c.id),
            account: tenancy.account.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            is_ha_enabled: c.ha_enabled,
            remap_rsa_mechanisms: c.remap_rsa_mechanisms,
            server_id: c.server_id.map(|s| s.to_string()),
            last_connection_ok: c.last_check.as_ref().map(|k| k.ok),
            last_connection_at: c.last_check.as_ref().map(|k| timestamp(k.at)),
            last_connection_error: c.last_check.as_ref().and_then(|k| k.error.clone()),
            products: c.products.clone(),
            meta: c.meta.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            partitions: c.members.iter().map(MemberView::from).collect(),
            created_at: timestamp(c.created_at),
            updated_at: timestamp(c.updated_at),
        }
    }
}

/// One member in a connection test.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberTestView {
    pub hostname: String,
    pub partition_label: String,
    pub serial_number: String,
    /// The token was found and the PIN logged in.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a connection test found: every member, and whether all worked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTestView {
    pub connection_ok: bool,
    pub tested_at: String,
    pub members: Vec<MemberTestView>,
}

impl ConnectionTestView {
    pub fn new(
        tests: &[luna_runner::registry::MemberTest],
        check: &luna_domain::ConnectionCheck,
    ) -> ConnectionTestView {
        ConnectionTestView {
            connection_ok: check.ok,
            tested_at: timestamp(check.at),
            members: tests
                .iter()
                .map(|t| MemberTestView {
                    hostname: t.member.hostname.clone(),
                    partition_label: t.member.partition_label.clone(),
                    serial_number: t.member.serial_number.clone(),
                    ok: t.error.is_none(),
                    error: t.error.clone(),
                })
                .collect(),
        }
    }
}

/// What an HSM server's certificate says.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub sha256_fingerprint: String,
}

/// A Luna Network HSM server, as CipherTrust Manager answers one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    pub id: String,
    pub uri: String,
    pub account: String,
    pub hostname: String,
    pub description: String,
    /// Always `NTLS`: STC is not offered.
    pub channel: &'static str,
    pub products: Vec<&'static str>,
    /// The client's own data, as it was given.
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    /// The certificate as it was given (PEM).
    pub hsm_certificate: String,
    pub certificate: CertificateView,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl ServerView {
    pub fn new(s: &luna_domain::HsmServer, tenancy: &Tenancy) -> ServerView {
        ServerView {
            id: s.id.to_string(),
            uri: format!("kylo:kylo:connectionmgmt:luna-network-servers:{}", s.id),
            account: tenancy.account.clone(),
            hostname: s.hostname.clone(),
            description: s.description.clone(),
            channel: "NTLS",
            products: s.products.iter().map(|p| p.as_str()).collect(),
            // Stored only after the edge parsed it as a JSON object.
            meta: s.meta.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            hsm_certificate: s.certificate.pem.clone(),
            certificate: CertificateView {
                subject: s.certificate.subject.clone(),
                issuer: s.certificate.issuer.clone(),
                not_before: timestamp(s.certificate.not_before),
                not_after: timestamp(s.certificate.not_after),
                sha256_fingerprint: s.certificate.sha256_fingerprint.clone(),
            },
            created_at: timestamp(s.created_at),
            updated_at: timestamp(s.updated_at),
        }
    }
}

/// The contract's list envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListView<T> {
    pub skip: i64,
    pub limit: i64,
    pub total: i64,
    pub resources: Vec<T>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub resource: Resource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub overall_status: &'static str,
    pub detailed_status: BTreeMap<String, String>,
    pub cloud: &'static str,
    pub partitions: Vec<String>,
    pub abort: bool,
    pub job_type: &'static str,
}

impl JobView {
    pub fn new(job: &luna_domain::Job, tenancy: &Tenancy) -> JobView {
        JobView {
            resource: Resource::new("synchronize", job.id, job.created_at, job.updated_at, tenancy),
            completed_at: job.completed_at.map(timestamp),
            overall_status: job.lifecycle().status().as_str(),
            detailed_status: job
                .detailed_status
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cloud: "hsm-luna",
            partitions: job.partitions.iter().map(Uuid::to_string).collect(),
            abort: job.lifecycle().abort(),
            job_type: job.job_type.as_str(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    user_id: String,
    username: String,
    groups: Vec<String>,
    #[serde(rename = "createdAt")]
    created_at: String,
}

impl From<&StoredUser> for UserView {
    fn from(u: &StoredUser) -> Self {
        UserView {
            user_id: u.id.to_string(),
            username: u.username.clone(),
            groups: u.groups.clone(),
            created_at: timestamp(u.created_at),
        }
    }
}

/// An audit record as the API, the console and every forwarding sink show
/// it (docs/audit.md): the same fields, the same names, versioned by `format`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// The record's format: 3 for every field below; 2 for records written
    /// before user ids, resource types and instances were kept (those are
    /// empty).
    format: i32,
    /// Its place in the trail: 1, 2, 3, … with no gap. A receiver drops a
    /// record whose `seq` it has had (forwarding is at least once).
    seq: i64,
    /// When it happened (RFC 3339, UTC).
    at: String,
    /// Who: the user's id (empty if nobody was admitted) and name (`-` then,
    /// or the name a failed login tried; `luna-server` for the service's own).
    user_id: String,
    username: String,
    /// What: `METHOD route` for a request, `operation <kind>` for an
    /// operation's outcome.
    action: String,
    /// What about: `key`, `user`, `session`, `connection`, `partition`, …
    resource_type: String,
    /// Its id (or the route's parameters, joined by `/`).
    resource_id: String,
    /// The status answered (with the reason of a refused login), or an
    /// operation's `succeeded` / `failed: reason`.
    outcome: String,
    /// The request's `X-Request-Id` (an outcome's: the request that asked for it).
    request_id: String,
    /// The client's address.
    source: String,
    /// The instance that wrote it.
    instance: String,
    /// The chain: the previous record's hash and this one's (HMAC-SHA256 hex).
    previous_hash: String,
    hash: String,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        AuditView {
            format: r.format,
            seq: r.seq,
            at: timestamp(r.entry.at),
            user_id: r.entry.user_id.clone(),
            username: r.entry.username.clone(),
            action: r.entry.action.clone(),
            resource_type: r.entry.resource_type.clone(),
            resource_id: r.entry.resource_id.clone(),
            outcome: r.entry.outcome.clone(),
            request_id: r.entry.request_id.clone(),
            source: r.entry.source.clone(),
            instance: r.entry.instance.clone(),
            previous_hash: r.previous_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

/// What a walk of the chain found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainCheck {
    intact: bool,
    /// The first record found wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_at: Option<i64>,
    /// Why: a record that does not follow from the one before, records cut
    /// off the end, or a rewritten trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<luna_store::AuditCheck> for ChainCheck {
    fn from(check: luna_store::AuditCheck) -> Self {
        match check {
            luna_store::AuditCheck::Intact => ChainCheck {
                intact: true,
                broken_at: None,
                reason: None,
            },
            luna_store::AuditCheck::Broken { at, why } => ChainCheck {
                intact: false,
                broken_at: Some(at),
                reason: Some(why),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    jwt: String,
    duration: i64,
    token_type: &'static str,
    /// The login session's id: the same across its refreshes, and what
    /// `DELETE /api/v1/auth/tokens/{id}` takes to log it out.
    refresh_token_id: String,
    refresh_token: String,
}

impl TokenAnswer {
    /// A login's or a refresh's answer.
    pub fn new(jwt: String, duration: i64, session: Uuid, refresh_token: String) -> TokenAnswer {
        TokenAnswer {
            jwt,
            duration,
            token_type: "Bearer",
            refresh_token_id: session.to_string(),
            refresh_token,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` (200: a token this instance uses is away, and its
    /// work waits for it, or an audit sink is behind; a restart would not
    /// help); `unavailable` (503: the
    /// database does not answer); or `stuck` (503: an operation's token call
    /// has hung: restart this instance).
    status: &'static str,
    /// What is wrong, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The tokens that are away, while `degraded`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<UnreachableToken>,
    /// The audit sinks further behind than `--audit-forward-lag-bound`
    /// records, while `degraded`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit_lagging: Vec<LaggingSink>,
}

/// An audit sink that is behind.
#[derive(Debug, Serialize, ToSchema)]
pub struct LaggingSink {
    sink: String,
    /// Records not yet delivered to it.
    lag: i64,
}

/// A token this instance uses that does not answer now.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableToken {
    partition_label: String,
    serial_number: String,
    /// Since when (RFC 3339).
    since: String,
    /// Why it was found unreachable.
    error: String,
}

impl Health {
    /// `ok`, or `degraded` naming every token that is away.
    pub fn of_tokens(watched: &[luna_runner::tokens::WatchedToken]) -> Health {
        let unreachable: Vec<UnreachableToken> = watched
            .iter()
            .filter_map(|token| {
                let since = token.reachability.away_since?;
                Some(UnreachableToken {
                    partition_label: token.partition_label.clone(),
                    serial_number: token.serial_number.clone(),
                    since: wall_clock(since),
                    error: token.reachability.last_error.clone().unwrap_or_default(),
                })
            })
            .collect();
        if unreachable.is_empty() {
            return Health {
                status: "ok",
                detail: None,
                unreachable,
                audit_lagging: Vec::new(),
            };
        }
        let names: Vec<String> = unreachable
            .iter()
            .map(|t| {
                format!(
                    "{:?} (serial {}) since {}",
                    t.partition_label, t.serial_number, t.since
                )
            })
            .collect();
        Health {
            status: "degraded",
            detail: Some(format!(
                "{} unreachable: {}; their work waits for them, and they are looked at every half second",
                if names.len() == 1 {
                    "a token is"
                } else {
                    "tokens are"
                },
                names.join(", ")
            )),
            unreachable,
            audit_lagging: Vec::new(),
        }
    }

    /// This health, `degraded` too if a sink in `lags` is more than `bound`
    /// records behind.
    pub fn with_audit_lags(mut self, lags: &[(String, i64)], bound: i64) -> Health {
        self.audit_lagging = lags
            .iter()
            .filter(|(_, lag)| *lag > bound)
            .map(|(sink, lag)| LaggingSink {
                sink: sink.clone(),
                lag: *lag,
            })
            .collect();
        if !self.audit_lagging.is_empty() {
            let behind: Vec<String> = self
                .audit_lagging
                .iter()
                .map(|s| format!("{} is {} records behind", s.sink, s.lag))
                .collect();
            let lagging = format!(
                "audit forwarding: {} (more than {bound}); records wait in the database, none is lost",
                behind.join(", ")
            );
            self.status = "degraded";
            self.detail = Some(match self.detail.take() {
                Some(tokens) => format!("{tokens}; {lagging}"),
                None => lagging,
            });
        }
        self
    }

    /// 503's body: `status` and what is wrong.
    pub fn unhealthy(status: &'static str, detail: String) -> Health {
        Health {
            status,
            detail: Some(detail),
            unreachable: Vec::new(),
            audit_lagging: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timestamp_tests {
    use time::{Date, Month, UtcOffset};

    use super::timestamp;

    #[test]
    fn timestamps_are_spelled_as_the_reference_spells_them() {
        let day = |d: u8| Date::from_calendar_date(2020, Month::December, d).unwrap();
        // Strings copied from the reference's examples.
        let cases = [
            (
                day(14).with_hms_micro(11, 0, 22, 540_490).unwrap(),
                "2020-12-14T11:00:22.54049Z",
            ),
            (
                day(14).with_hms_micro(10, 55, 12, 86_341).unwrap(),
                "2020-12-14T10:55:12.086341Z",
            ),
            (
                day(14).with_hms_nano(10, 55, 12, 86_341_444).unwrap(),
                "2020-12-14T10:55:12.086341444Z",
            ),
            (
                day(15).with_hms_micro(6, 20, 15, 158_024).unwrap(),
                "2020-12-15T06:20:15.158024Z",
            ),
        ];
        for (at, spelled) in cases {
            assert_eq!(timestamp(at.assume_utc()), spelled);
        }
        // Whole seconds carry no fraction; another offset is written in UTC.
        assert_eq!(
            timestamp(day(14).with_hms(11, 10, 7).unwrap().assume_utc()),
            "2020-12-14T11:10:07Z"
        );
        let in_paris = day(14)
            .with_hms(12, 10, 7)
            .unwrap()
            .assume_offset(UtcOffset::from_hms(1, 0, 0).unwrap());
        assert_eq!(timestamp(in_paris), "2020-12-14T11:10:07Z");
    }
}
