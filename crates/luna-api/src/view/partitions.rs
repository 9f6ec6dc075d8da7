//! Partitions, their members and member tokens, the mechanisms a create may use, connections and a connection's test, as the API shows them.

use super::*;

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
            .map(|&requested| match token.generated_with(requested, remap) {
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
