//! A key's row, and the columns an update of one changes (`KeyChange`).

use super::*;

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = keys)]
pub struct KeyRow {
    pub id: String,
    pub partition_id: String,
    pub partition_label: String,
    pub label: String,
    pub status: String,
    pub operation: String,
    pub operation_status: String,
    pub operation_error: Option<String>,
    pub algorithm: Option<String>,
    pub object_type: Option<String>,
    pub mechanism: Option<String>,
    pub generated_with: Option<String>,
    pub size: i32,
    pub attributes: String,
    pub cka_id: Vec<u8>,
    pub object_uid: String,
    pub sha_256_fingerprint: String,
    pub replication_info: String,
    pub replicated: bool,
    pub byok_key: bool,
    pub origin: String,
    pub modulus: String,
    pub exponent: i64,
    pub link_id: Option<String>,
    pub ha_enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl KeyRow {
    pub fn from_domain(key: &Key) -> KeyRow {
        KeyRow {
            id: key.id.to_string(),
            partition_id: key.partition_id.to_string(),
            partition_label: key.partition_label.clone(),
            label: key.label.clone(),
            status: key.lifecycle().status().as_str().into(),
            operation: key.lifecycle().operation().as_str().into(),
            operation_status: key.lifecycle().operation_status().as_str().into(),
            operation_error: key.lifecycle().operation_error().map(str::to_owned),
            algorithm: key.algorithm.map(|a| a.as_str().into()),
            object_type: key.object_type.map(|t| t.as_str().into()),
            mechanism: key.mechanism.map(|m| m.as_str().into()),
            generated_with: key.generated_with.map(|m| m.as_str().into()),
            // Sizes are validated to a handful of values far below i32::MAX.
            size: i32::try_from(key.size).unwrap_or(i32::MAX),
            attributes: key.attributes.names().join(","),
            cka_id: key.cka_id.clone(),
            object_uid: key.object_uid.clone(),
            sha_256_fingerprint: key.sha_256_fingerprint.clone(),
            replication_info: json_map(&key.replication_info),
            replicated: key.replicated,
            byok_key: key.byok_key,
            origin: key.origin.as_str().into(),
            modulus: key.modulus.clone(),
            // RSA exponents fit in 63 bits in practice; a larger one is clamped.
            exponent: i64::try_from(key.exponent).unwrap_or(i64::MAX),
            link_id: key.link_id.map(|l| l.to_string()),
            ha_enabled: key.ha_enabled,
            created_at: micros(key.created_at),
            updated_at: micros(key.updated_at),
        }
    }

    pub fn into_domain(self) -> Result<Key> {
        let names: Vec<&str> = self.attributes.split(',').filter(|n| !n.is_empty()).collect();
        Ok(Key::new(
            KeyData {
                id: uuid("key id", &self.id)?,
                partition_id: uuid("key partition_id", &self.partition_id)?,
                partition_label: self.partition_label,
                label: self.label,
                algorithm: optional_wire("key algorithm", self.algorithm.as_deref())?,
                object_type: optional_wire("key object_type", self.object_type.as_deref())?,
                mechanism: optional_wire("key mechanism", self.mechanism.as_deref())?,
                generated_with: optional_wire("key generated_with", self.generated_with.as_deref())?,
                size: u32::try_from(self.size).map_err(|e| crate::StoreError::corrupt("key size", e))?,
                attributes: AttributeSet::parse_names(&names)
                    .map_err(|e| crate::StoreError::corrupt("key attributes", e))?,
                cka_id: self.cka_id,
                object_uid: self.object_uid,
                sha_256_fingerprint: self.sha_256_fingerprint,
                replication_info: from_json("key replication_info", &self.replication_info)?,
                replicated: self.replicated,
                byok_key: self.byok_key,
                origin: wire("key origin", &self.origin)?,
                modulus: self.modulus,
                exponent: u64::try_from(self.exponent)
                    .map_err(|e| crate::StoreError::corrupt("key exponent", e))?,
                link_id: self
                    .link_id
                    .as_deref()
                    .map(|l| uuid("key link_id", l))
                    .transpose()?,
                ha_enabled: self.ha_enabled,
                created_at: from_micros("key created_at", self.created_at)?,
                updated_at: from_micros("key updated_at", self.updated_at)?,
            },
            KeyLifecycle::restore(
                wire("key status", &self.status)?,
                wire("key operation", &self.operation)?,
                wire("key operation_status", &self.operation_status)?,
                self.operation_error,
            )
            .map_err(|e| crate::StoreError::corrupt("key lifecycle", e))?,
        ))
    }
}

/// The columns of a key row an update changes, and only those: SQLite
/// rewrites the entries of every index on a column a statement sets, changed
/// or not. `None` leaves a column as it is; `Some(None)` sets a nullable one
/// to NULL (an `operation_error` cleared when an operation begins). A key
/// never moves to another partition and keeps its id and creation time.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = keys)]
pub struct KeyChange {
    pub partition_label: Option<String>,
    pub label: Option<String>,
    pub status: Option<String>,
    pub operation: Option<String>,
    pub operation_status: Option<String>,
    pub operation_error: Option<Option<String>>,
    pub algorithm: Option<Option<String>>,
    pub object_type: Option<Option<String>>,
    pub mechanism: Option<Option<String>>,
    pub generated_with: Option<Option<String>>,
    pub size: Option<i32>,
    pub attributes: Option<String>,
    pub cka_id: Option<Vec<u8>>,
    pub object_uid: Option<String>,
    pub sha_256_fingerprint: Option<String>,
    pub replication_info: Option<String>,
    pub replicated: Option<bool>,
    pub byok_key: Option<bool>,
    pub origin: Option<String>,
    pub modulus: Option<String>,
    pub exponent: Option<i64>,
    pub link_id: Option<Option<String>>,
    pub ha_enabled: Option<bool>,
    pub updated_at: Option<i64>,
}

impl KeyChange {
    /// What turns `before` into `after`; `None` if nothing does.
    pub fn between(before: &KeyRow, after: &KeyRow) -> Option<KeyChange> {
        macro_rules! columns {
            ($($column:ident),+) => {{
                let change = KeyChange {
                    $($column: (before.$column != after.$column).then(|| after.$column.clone()),)+
                };
                let any = false $(|| change.$column.is_some())+;
                any.then_some(change)
            }};
        }
        columns!(
            partition_label,
            label,
            status,
            operation,
            operation_status,
            operation_error,
            algorithm,
            object_type,
            mechanism,
            generated_with,
            size,
            attributes,
            cka_id,
            object_uid,
            sha_256_fingerprint,
            replication_info,
            replicated,
            byok_key,
            origin,
            modulus,
            exponent,
            link_id,
            ha_enabled,
            updated_at
        )
    }
}
