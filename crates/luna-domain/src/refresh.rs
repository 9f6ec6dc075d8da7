//! Refresh: bringing key records in line with what the members' tokens hold.
//!
//! Pure: the caller enumerates the tokens and stores the result. A refresh
//! reads the records ([`BeforeScan::of`]), scans every member into a
//! [`MemberScan`], reads the records again and asks [`plan`] what to write:
//! records to insert for objects made outside the service, and records to
//! update, each with the [`KeyVersion`] it was read at, so that the write is
//! a compare-and-set that loses to any change made meanwhile.
//!
//! An object's identity on a partition is its `object_uid`: its `CKA_ID` in
//! hex followed by its class, or, for an object without `CKA_ID`,
//! `fp-` and its fingerprint (its public identity: class, key type, modulus,
//! exponent, check value). Two objects without `CKA_ID` that no public
//! attribute tells apart are tracked as one.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::attribute::{Attribute, AttributeSet};
use crate::key::{
    Algorithm, Key, KeyData, KeyEvent, KeyLifecycle, KeyStatus, KeyVersion, ObjectType, Origin,
};

/// A key object one member holds, as its token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedObject {
    /// Its identity on the partition; records are matched to objects by it.
    pub object_uid: String,
    /// Its class.
    pub object_type: ObjectType,
    /// `None` for a key type this service does not know.
    pub algorithm: Option<Algorithm>,
    /// Its `CKA_LABEL`.
    pub label: String,
    /// Its `CKA_ID`; may be empty.
    pub cka_id: Vec<u8>,
    /// Key length in bits; 0 when the token does not say.
    pub size: u32,
    /// RSA modulus, lower-case hex; empty for AES.
    pub modulus: String,
    /// RSA public exponent; 0 for AES.
    pub exponent: u64,
    /// The boolean attributes true on it, as the token reports them.
    pub attributes: AttributeSet,
    /// Only a cloning-domain key may wrap it; the token reports it extractable
    /// so the domain can copy it, and the record keeps the user's choice.
    pub wrap_with_trusted: bool,
    /// SHA-256 over its public identity, in hex: what the record reports
    /// as `sha_256_fingerprint`.
    pub fingerprint: String,
}

/// What one member said: the objects it holds, or why it could not be read.
#[derive(Debug, Clone)]
pub enum MemberScan {
    /// Every key object the member holds.
    Read(Vec<ObservedObject>),
    /// Why the member could not be read; this becomes the member's entry in
    /// `replication_info`, and stops the plan from concluding `DELETED`.
    Away(String),
}

/// The partition facts a refresh needs.
#[derive(Debug, Clone)]
pub struct RefreshScope {
    /// The partition refreshed; records it inserts belong to it.
    pub partition_id: Uuid,
    /// Its label, copied into inserted records.
    pub partition_label: String,
    /// Whether it is an HA group, copied into inserted records.
    pub ha_enabled: bool,
    /// Member serial numbers, in member order.
    pub members: Vec<String>,
}

/// The records as they were when the scan began (each one's `updated_at`),
/// and how recent a change may be for the scan to judge it. A record changed
/// or made since the scan began may have made its object after the scan
/// passed that object's place; one changed shortly before may name an object
/// that another process wrote and this one's module does not list yet (two
/// instances on one SoftHSM2 token store: seen). That the scan missed such an
/// object proves nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeforeScan {
    updated_at: BTreeMap<Uuid, OffsetDateTime>,
    /// Records changed after this are too recent to be judged.
    settled_by: Option<OffsetDateTime>,
}

impl BeforeScan {
    /// `records` as read when the scan began at `started`; `settle`: how old
    /// a change must be before then for the scan to judge its record.
    pub fn of(records: &[Key], started: OffsetDateTime, settle: time::Duration) -> BeforeScan {
        BeforeScan {
            updated_at: records.iter().map(|k| (k.id, k.updated_at)).collect(),
            settled_by: Some(started - settle),
        }
    }

    /// Whether the scan may judge `record`: it is as it was before the scan
    /// (every change of a record moves its `updated_at`), and that was
    /// `settle` before the scan began.
    pub fn unchanged(&self, record: &Key) -> bool {
        self.updated_at.get(&record.id) == Some(&record.updated_at)
            && self
                .settled_by
                .is_some_and(|settled| record.updated_at <= settled)
    }
}

/// The records to insert (objects made outside the service) and to update.
#[derive(Debug, Default, PartialEq)]
pub struct RefreshPlan {
    /// New `AVAILABLE` records, origin `external`, pairs linked, ids from
    /// the caller's `new_id`.
    pub inserted: Vec<Key>,
    /// Each record with the version it was read in, for a compare-and-set.
    pub updated: Vec<(Key, KeyVersion)>,
}

/// The key records (read after the scan) and what each member holds → what
/// to write.
///
/// Records with an operation in progress are left alone (their operation will
/// write them). A record whose object no member holds ends `DELETED`, unless a
/// member could not be read (then nothing can be concluded), or the record
/// changed since the scan began (`before`): a create that finished meanwhile
/// may have made its object after the scan went by.
///
/// `new_id` names each record the plan inserts: ids are the caller's, so
/// that this crate draws no randomness and a test can predict them (the
/// service passes `Uuid::now_v7`: ids in time order, so that new records go
/// to the end of the primary key instead of a random page of it).
pub fn plan(
    scope: &RefreshScope,
    before: &BeforeScan,
    records: &[Key],
    seen: &[MemberScan],
    now: OffsetDateTime,
    mut new_id: impl FnMut() -> Uuid,
) -> RefreshPlan {
    // object_uid → (member index → object)
    let mut found: BTreeMap<&str, BTreeMap<usize, &ObservedObject>> = BTreeMap::new();
    for (m, view) in seen.iter().enumerate() {
        if let MemberScan::Read(objects) = view {
            for object in objects {
                found
                    .entry(object.object_uid.as_str())
                    .or_default()
                    .insert(m, object);
            }
        }
    }
    let any_unreachable = seen.iter().any(|v| matches!(v, MemberScan::Away(_)));
    let replication =
        |holders: Option<&BTreeMap<usize, &ObservedObject>>| -> (BTreeMap<String, String>, bool) {
            let mut info = BTreeMap::new();
            let mut everywhere = true;
            for (m, serial) in scope.members.iter().enumerate() {
                let state = match (&seen.get(m), holders.and_then(|h| h.get(&m))) {
                    (_, Some(_)) => "available".to_owned(),
                    (Some(MemberScan::Away(reason)), None) => reason.clone(),
                    _ => "the key is not on this member".to_owned(),
                };
                everywhere &= state == "available";
                info.insert(serial.clone(), state);
            }
            (info, everywhere)
        };

    let mut plan = RefreshPlan::default();
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for record in records {
        known.insert(record.object_uid.as_str());
        if record.lifecycle().is_busy() || record.lifecycle().status() != KeyStatus::Available {
            continue;
        }
        let holders = found.get(record.object_uid.as_str());
        let mut key = record.clone();
        match holders.and_then(best) {
            Some(object) => {
                let (info, everywhere) = replication(holders);
                key.label = object.label.clone();
                key.size = object.size;
                key.attributes = object.attributes;
                if object.wrap_with_trusted {
                    key.attributes.set(
                        Attribute::Extractable,
                        record.attributes.contains(Attribute::Extractable),
                    );
                }
                key.modulus = object.modulus.clone();
                key.exponent = object.exponent;
                key.sha_256_fingerprint = object.fingerprint.clone();
                key.replication_info = info;
                key.replicated = everywhere;
            }
            None if any_unreachable => {
                let (info, _) = replication(None);
                key.replication_info = info;
                key.replicated = false;
            }
            None if !before.unchanged(record) => continue,
            None => {
                if key.apply(&KeyEvent::Vanished, now).is_err() {
                    continue;
                }
                let (info, _) = replication(None);
                key.replication_info = info;
                key.replicated = false;
            }
        }
        if key != *record {
            key.updated_at = now;
            plan.updated.push((key, KeyVersion::of(record)));
        }
    }

    // Objects with no record: made outside the service.
    let mut new: Vec<Key> = Vec::new();
    for (uid, holders) in &found {
        if known.contains(uid) {
            continue;
        }
        let Some(object) = best(holders) else { continue };
        let (info, everywhere) = replication(Some(holders));
        new.push(discovered(scope, object, new_id(), info, everywhere, now));
    }
    // The halves of an RSA pair name each other: the same CKA_ID, or (without
    // one) the same modulus. Existing records count as partners too.
    let pair_key = |k: &Key| -> Option<String> {
        if k.algorithm != Some(Algorithm::Rsa) {
            return None;
        }
        Some(if k.cka_id.is_empty() {
            format!("m:{}", k.modulus)
        } else {
            format!("i:{}", hex::encode(&k.cka_id))
        })
    };
    let mut partners: BTreeMap<(String, ObjectType), Uuid> = BTreeMap::new();
    let live = records
        .iter()
        .filter(|k| k.lifecycle().status() != KeyStatus::Deleted);
    for k in live.chain(new.iter()) {
        if let (Some(p), Some(t)) = (pair_key(k), k.object_type) {
            partners.entry((p, t)).or_insert(k.id);
        }
    }
    let partner = |k: &Key| -> Option<Uuid> {
        let other = match k.object_type? {
            ObjectType::PrivateKey => ObjectType::PublicKey,
            ObjectType::PublicKey => ObjectType::PrivateKey,
            ObjectType::SecretKey => return None,
        };
        partners.get(&(pair_key(k)?, other)).copied()
    };
    for k in &mut new {
        k.link_id = partner(k);
    }
    // Records made without their partner (an earlier refresh, or recorded
    // while the scan went on) are linked now.
    for record in records
        .iter()
        .filter(|r| r.link_id.is_none() && !r.lifecycle().is_busy())
    {
        let Some(link) = partner(record) else { continue };
        match plan.updated.iter_mut().find(|(k, _)| k.id == record.id) {
            Some((k, _)) => k.link_id = Some(link),
            None => {
                let mut k = record.clone();
                k.link_id = Some(link);
                k.updated_at = now;
                plan.updated.push((k, KeyVersion::of(record)));
            }
        }
    }
    plan.inserted = new;
    plan
}

/// The record of an object made outside the service.
fn discovered(
    scope: &RefreshScope,
    object: &ObservedObject,
    id: Uuid,
    replication_info: BTreeMap<String, String>,
    replicated: bool,
    now: OffsetDateTime,
) -> Key {
    Key::new(
        KeyData {
            id,
            partition_id: scope.partition_id,
            partition_label: scope.partition_label.clone(),
            label: object.label.clone(),
            algorithm: object.algorithm,
            object_type: Some(object.object_type),
            mechanism: None,
            generated_with: None,
            size: object.size,
            attributes: object.attributes,
            cka_id: object.cka_id.clone(),
            object_uid: object.object_uid.clone(),
            sha_256_fingerprint: object.fingerprint.clone(),
            replication_info,
            replicated,
            byok_key: false,
            origin: Origin::External,
            modulus: object.modulus.clone(),
            exponent: object.exponent,
            link_id: None,
            ha_enabled: scope.ha_enabled,
            created_at: now,
            updated_at: now,
        },
        KeyLifecycle::discovered(),
    )
}

/// The record of an object seen on the first member, written while the
/// other members are still to be read: the first member holds it, the others
/// are not known yet. The plan made once every member is read corrects it.
/// `id` names the new record (the caller's, as in [`plan`]).
pub fn first_sight(scope: &RefreshScope, object: &ObservedObject, id: Uuid, now: OffsetDateTime) -> Key {
    let info = scope
        .members
        .iter()
        .enumerate()
        .map(|(m, serial)| {
            let state = if m == 0 {
                "available"
            } else {
                "not read yet by the refresh in progress"
            };
            (serial.clone(), state.to_owned())
        })
        .collect();
    discovered(scope, object, id, info, scope.members.len() == 1, now)
}

/// The member's description to record: one that knows the key's size (a
/// token may not report the length of a key it unwrapped).
fn best<'a>(holders: &BTreeMap<usize, &'a ObservedObject>) -> Option<&'a ObservedObject> {
    holders.values().copied().max_by_key(|o| o.size)
}

#[cfg(test)]
mod tests;
