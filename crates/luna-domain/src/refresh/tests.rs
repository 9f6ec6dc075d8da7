//! Tests of the refresh plan: what a refresh writes, given the records and what each member holds.

use super::*;
use crate::key::{Mechanism, OperationKind};

/// The plan of a scan that began now, judging every record (no settle time).
fn plan_now(s: &RefreshScope, records: &[Key], seen: &[MemberScan]) -> RefreshPlan {
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
        MemberScan::Read(vec![
            kept.clone(),
            renamed_now.clone(),
            outside_private.clone(),
            outside_public.clone(),
        ]),
        MemberScan::Read(vec![kept.clone(), renamed_now]),
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
    let seen = vec![MemberScan::Read(vec![]), MemberScan::Read(vec![])];
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
        MemberScan::Read(vec![]),
        MemberScan::Away("member s2 is down".into()),
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
            MemberScan::Read(vec![on_token.clone()]),
            MemberScan::Read(vec![on_token]),
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
        &[MemberScan::Read(vec![]), MemberScan::Read(vec![])],
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
        MemberScan::Read(vec![private.clone(), public.clone()]),
        MemberScan::Read(vec![private, public]),
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
        &[MemberScan::Read(vec![private, public]), MemberScan::Read(vec![])],
        OffsetDateTime::now_utc(),
        Uuid::new_v4,
    );
    assert_eq!(plan.inserted.len(), 2);
    assert!(plan.inserted.iter().all(|k| k.link_id.is_some()));
}
