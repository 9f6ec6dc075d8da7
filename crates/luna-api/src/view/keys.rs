//! A key as the API shows it (`KeyView`).

use super::*;

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
    pub generated_with: Option<&'static str>,
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
            generated_with: key.generated_with.map(|m| m.as_str()),
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
