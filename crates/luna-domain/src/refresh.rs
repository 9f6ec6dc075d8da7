//! Refresh: bringing key records in line with what the members' tokens hold.
//!
//! Pure: the caller enumerates the tokens and stores the result. A refresh
//! reads the records ([`BeforeScan::of`]), scans every member into a
//! [`MemberView`], reads the records again and asks [`plan`] what to write:
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
pub enum MemberView {
    /// Every key object the member holds.
    Read(Vec<ObservedObject>),
    /// Why the member could not be read; this becomes the member's entry in
    /// `replication_info`, and stops the plan from concluding `DELETED`.
    Unreachable(String),
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
    seen: &[MemberView],
    now: OffsetDateTime,
    mut new_id: impl FnMut() -> Uuid,
) -> RefreshPlan {
    // object_uid → (member index → object)
    let mut found: BTreeMap<&str, BTreeMap<usize, &ObservedObject>> = BTreeMap::new();
    for (m, view) in seen.iter().enumerate() {
        if let MemberView::Read(objects) = view {
            for object in objects {
                found
                    .entry(object.object_uid.as_str())
                    .or_default()
                    .insert(m, object);
            }
        }
    }
    let any_unreachable = seen.iter().any(|v| matches!(v, MemberView::Unreachable(_)));
    let replication =
        |holders: Option<&BTreeMap<usize, &ObservedObject>>| -> (BTreeMap<String, String>, bool) {
            let mut info = BTreeMap::new();
            let mut everywhere = true;
            for (m, serial) in scope.members.iter().enumerate() {
                let state = match (&seen.get(m), holders.and_then(|h| h.get(&m))) {
                    (_, Some(_)) => "available".to_owned(),
                    (Some(MemberView::Unreachable(reason)), None) => reason.clone(),
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
mod tests {
    use super::*;
    use crate::key::{Mechanism, OperationKind};

    /// The plan of a scan that began now, judging every record (no settle time).
    fn plan_now(s: &RefreshScope, records: &[Key], seen: &[MemberView]) -> RefreshPlan {
        let now = OffsetDateTime::now_utc();
        plan(
            s,
            &BeforeScan::of(records, now, time::Duration::ZERO),
            records,
            seen,
            now,
            Uuid::new_v4,
        )
    }

    fn object(uid: &str, object_type: ObjectType, cka_id: &[u8], label: &str) -> ObservedObject {
        ObservedObject {
            object_uid: uid.into(),
            object_type,
            algorithm: Some(if object_type == ObjectType::SecretKey {
                Algorithm::Aes
            } else {
                Algorithm::Rsa
            }),
            label: label.into(),
            cka_id: cka_id.to_vec(),
            size: if object_type == ObjectType::SecretKey {
                256
            } else {
                2048
            },
            modulus: if object_type == ObjectType::SecretKey {
                String::new()
            } else {
                "abcd".into()
            },
            exponent: 0,
            attributes: AttributeSet::parse_names(&["CKA_TOKEN", "CKA_SIGN"]).unwrap(),
            wrap_with_trusted: false,
            fingerprint: format!("fp-{uid}"),
        }
    }

    fn scope() -> RefreshScope {
        RefreshScope {
            partition_id: Uuid::new_v4(),
            partition_label: "p".into(),
            ha_enabled: true,
            members: vec!["s1".into(), "s2".into()],
        }
    }

    fn record(scope: &RefreshScope, o: &ObservedObject) -> Key {
        let now = OffsetDateTime::now_utc();
        Key::new(
            KeyData {
                id: Uuid::new_v4(),
                partition_id: scope.partition_id,
                partition_label: scope.partition_label.clone(),
                label: o.label.clone(),
                algorithm: o.algorithm,
                object_type: Some(o.object_type),
                mechanism: Some(Mechanism::AesKeyGen),
                generated_with: None,
                size: o.size,
                attributes: o.attributes,
                cka_id: o.cka_id.clone(),
                object_uid: o.object_uid.clone(),
                sha_256_fingerprint: o.fingerprint.clone(),
                replication_info: BTreeMap::from([
                    ("s1".into(), "available".into()),
                    ("s2".into(), "available".into()),
                ]),
                replicated: true,
                byok_key: true,
                origin: Origin::Cckm,
                modulus: o.modulus.clone(),
                exponent: o.exponent,
                link_id: None,
                ha_enabled: true,
                created_at: now,
                updated_at: now,
            },
            KeyLifecycle::discovered(),
        )
    }

    #[test]
    fn outside_objects_appear_changes_are_picked_up_and_gone_objects_end_deleted() {
        let s = scope();
        let kept = object("aa04", ObjectType::SecretKey, b"\xaa", "kept");
        let renamed = object("bb04", ObjectType::SecretKey, b"\xbb", "old name");
        let gone = object("cc04", ObjectType::SecretKey, b"\xcc", "gone");
        let records = vec![record(&s, &kept), record(&s, &renamed), record(&s, &gone)];
        let mut renamed_now = renamed.clone();
        renamed_now.label = "new name".into();
        let outside_private = object("dd03", ObjectType::PrivateKey, b"\xdd", "outside");
        let outside_public = object("dd02", ObjectType::PublicKey, b"\xdd", "outside");
        let seen = vec![
            MemberView::Read(vec![
                kept.clone(),
                renamed_now.clone(),
                outside_private.clone(),
                outside_public.clone(),
            ]),
            MemberView::Read(vec![kept.clone(), renamed_now]),
        ];
        let plan = plan_now(&s, &records, &seen);
        let updated: BTreeMap<&str, &Key> = plan
            .updated
            .iter()
            .map(|(k, _)| (k.object_uid.as_str(), k))
            .collect();
        assert!(
            !updated.contains_key("aa04"),
            "an unchanged record is not written"
        );
        assert_eq!(updated["bb04"].label, "new name");
        assert_eq!(updated["cc04"].lifecycle().status(), KeyStatus::Deleted);
        assert_eq!(plan.inserted.len(), 2);
        let private = plan
            .inserted
            .iter()
            .find(|k| k.object_type == Some(ObjectType::PrivateKey))
            .unwrap();
        let public = plan
            .inserted
            .iter()
            .find(|k| k.object_type == Some(ObjectType::PublicKey))
            .unwrap();
        assert_eq!(
            (private.link_id, public.link_id),
            (Some(public.id), Some(private.id)),
            "halves are paired"
        );
        assert_eq!(private.origin, Origin::External);
        assert_eq!(private.replication_info["s1"], "available");
        assert_eq!(private.replication_info["s2"], "the key is not on this member");
        assert!(!private.replicated);
    }

    /// The race a refresh must lose: the scan went by, then a create (or any
    /// change) finished; the record is AVAILABLE and its object is not in
    /// the scan. It is not marked DELETED; a record unchanged since the scan
    /// began, whose object is gone, is.
    #[test]
    fn a_record_changed_since_the_scan_began_is_never_concluded_deleted() {
        let s = scope();
        let gone = record(&s, &object("aa04", ObjectType::SecretKey, b"\xaa", "gone"));
        let mut finished = record(&s, &object("bb04", ObjectType::SecretKey, b"\xbb", "finished"));
        let made_during = record(&s, &object("cc04", ObjectType::SecretKey, b"\xcc", "made during"));
        let before = BeforeScan::of(
            &[gone.clone(), finished.clone()],
            OffsetDateTime::now_utc(),
            time::Duration::ZERO,
        );
        finished.updated_at += time::Duration::milliseconds(3);
        let records = vec![gone.clone(), finished.clone(), made_during.clone()];
        let seen = vec![MemberView::Read(vec![]), MemberView::Read(vec![])];
        let plan = plan(
            &s,
            &before,
            &records,
            &seen,
            OffsetDateTime::now_utc(),
            Uuid::new_v4,
        );
        let ended: Vec<Uuid> = plan
            .updated
            .iter()
            .filter(|(k, _)| k.lifecycle().status() == KeyStatus::Deleted)
            .map(|(k, _)| k.id)
            .collect();
        assert_eq!(ended, [gone.id], "only the unchanged record ends DELETED");
        assert!(plan.updated.iter().all(|(k, _)| k.id == gone.id), "{plan:?}");
        assert!(plan.inserted.is_empty());

        // Changed less than `settle` before the scan: too recent to judge
        // (another process's object may not be listed yet); older: judged.
        let recent = BeforeScan::of(
            std::slice::from_ref(&gone),
            gone.updated_at + time::Duration::seconds(30),
            time::Duration::seconds(60),
        );
        assert!(super::plan(
            &s,
            &recent,
            std::slice::from_ref(&gone),
            &seen,
            OffsetDateTime::now_utc(),
            Uuid::new_v4
        )
        .updated
        .is_empty());
        let settled = BeforeScan::of(
            std::slice::from_ref(&gone),
            gone.updated_at + time::Duration::seconds(61),
            time::Duration::seconds(60),
        );
        assert_eq!(
            super::plan(
                &s,
                &settled,
                std::slice::from_ref(&gone),
                &seen,
                OffsetDateTime::now_utc(),
                Uuid::new_v4
            )
            .updated[0]
                .0
                .lifecycle()
                .status(),
            KeyStatus::Deleted
        );
    }

    #[test]
    fn an_unreachable_member_stops_deletion_and_says_why() {
        let s = scope();
        let a = object("aa04", ObjectType::SecretKey, b"\xaa", "a");
        let records = vec![record(&s, &a)];
        let seen = vec![
            MemberView::Read(vec![]),
            MemberView::Unreachable("member s2 is down".into()),
        ];
        let plan = plan_now(&s, &records, &seen);
        let (key, _) = &plan.updated[0];
        assert_eq!(
            key.lifecycle().status(),
            KeyStatus::Available,
            "nothing is concluded while a member is unreadable"
        );
        assert_eq!(key.replication_info["s2"], "member s2 is down");
        assert!(!key.replicated);
    }

    #[test]
    fn a_wrap_with_trusted_key_keeps_the_extractable_the_user_set() {
        let s = scope();
        let mut on_token = object("aa04", ObjectType::SecretKey, b"\xaa", "a");
        on_token.attributes.insert(Attribute::Extractable);
        on_token.wrap_with_trusted = true;
        let mut recorded = record(&s, &on_token);
        recorded.attributes.set(Attribute::Extractable, false);
        recorded.label = "renamed since".into();
        let records = [recorded];
        let plan = plan_now(
            &s,
            &records,
            &[
                MemberView::Read(vec![on_token.clone()]),
                MemberView::Read(vec![on_token]),
            ],
        );
        let (key, _) = &plan.updated[0];
        assert!(!key.attributes.contains(Attribute::Extractable));
        assert!(key.attributes.contains(Attribute::Sign));
    }

    #[test]
    fn busy_records_are_left_to_their_operation() {
        let s = scope();
        let a = object("aa04", ObjectType::SecretKey, b"\xaa", "a");
        let mut busy = record(&s, &a);
        busy.apply(
            &KeyEvent::Begin(OperationKind::KeyUpdate),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let records = [busy];
        let plan = plan_now(
            &s,
            &records,
            &[MemberView::Read(vec![]), MemberView::Read(vec![])],
        );
        assert!(plan.updated.is_empty() && plan.inserted.is_empty());
    }

    #[test]
    fn halves_recorded_apart_are_linked_by_the_next_plan() {
        let s = scope();
        let private = object("ee03", ObjectType::PrivateKey, b"\xee", "pair");
        let public = object("ee02", ObjectType::PublicKey, b"\xee", "pair");
        let records = vec![
            first_sight(&s, &private, Uuid::new_v4(), OffsetDateTime::now_utc()),
            first_sight(&s, &public, Uuid::new_v4(), OffsetDateTime::now_utc()),
        ];
        assert!(records
            .iter()
            .all(|r| r.link_id.is_none() && r.replication_info["s2"].contains("not read yet")));
        let seen = [
            MemberView::Read(vec![private.clone(), public.clone()]),
            MemberView::Read(vec![private, public]),
        ];
        let plan = plan_now(&s, &records, &seen);
        assert!(plan.inserted.is_empty());
        assert_eq!(plan.updated.len(), 2);
        for (k, _) in &plan.updated {
            let other = records.iter().find(|r| r.id != k.id).unwrap();
            assert_eq!(k.link_id, Some(other.id));
            assert_eq!(k.replication_info["s2"], "available");
            assert!(k.replicated);
        }
    }

    #[test]
    fn objects_without_cka_id_pair_by_modulus() {
        let s = scope();
        let private = object("fp-1", ObjectType::PrivateKey, b"", "no id");
        let public = object("fp-2", ObjectType::PublicKey, b"", "no id");
        let plan = plan(
            &s,
            &BeforeScan::default(),
            &[],
            &[MemberView::Read(vec![private, public]), MemberView::Read(vec![])],
            OffsetDateTime::now_utc(),
            Uuid::new_v4,
        );
        assert_eq!(plan.inserted.len(), 2);
        assert!(plan.inserted.iter().all(|k| k.link_id.is_some()));
    }
}
