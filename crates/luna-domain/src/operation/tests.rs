//! Tests of the durable operation's transitions, leases and retries.

use super::*;
use time::Duration;

fn stored(op: &Operation) -> StoredOperation {
    StoredOperation {
        id: op.id,
        payload: op.payload.clone(),
        state: op.state,
        attempts: op.attempts,
        lease_owner: op.lease_owner.clone(),
        lease_expires_at: op.lease_expires_at,
        last_error: op.last_error.clone(),
        created_at: op.created_at,
        updated_at: op.updated_at,
        partition_id: op.partition_id,
        requested_by: op.requested_by.clone(),
    }
}

#[test]
fn storage_gives_back_only_places_in_the_queue_the_moves_make() {
    let now = OffsetDateTime::now_utc();
    let mut op = Operation::queued(
        Uuid::new_v4(),
        OperationPayload::DestroyKey {
            key_id: Uuid::new_v4(),
        },
        now,
    );
    let mut made = vec![op.clone()];
    op.claim("w", now, now + Duration::seconds(30)).unwrap();
    made.push(op.clone());
    op.retry_later("CKR_DEVICE_ERROR".into(), now + Duration::seconds(2), now)
        .unwrap();
    made.push(op.clone());
    op.finish(Err("CKR_DEVICE_ERROR".into()), now).unwrap();
    made.push(op.clone());
    for op in &made {
        assert_eq!(Operation::restore(stored(op)).as_ref(), Ok(op));
    }
    let queued = &made[0];
    let running = &made[1];
    let failed = &made[3];
    let refused = [
        StoredOperation {
            attempts: 1,
            ..stored(queued)
        },
        StoredOperation {
            lease_owner: Some("w".into()),
            ..stored(queued)
        },
        StoredOperation {
            lease_owner: None,
            ..stored(running)
        },
        StoredOperation {
            lease_expires_at: None,
            ..stored(running)
        },
        StoredOperation {
            attempts: MAX_ATTEMPTS + 1,
            ..stored(running)
        },
        StoredOperation {
            last_error: None,
            ..stored(failed)
        },
        StoredOperation {
            lease_owner: Some("w".into()),
            lease_expires_at: Some(now),
            ..stored(failed)
        },
    ];
    for bad in refused {
        let err = Operation::restore(bad.clone()).unwrap_err();
        assert!(
            err.to_string().contains(&format!("operation {}", bad.id)),
            "{err}"
        );
    }
}

#[test]
fn operation_transition_table() {
    let now = OffsetDateTime::now_utc();
    let expired = Some(now - Duration::seconds(1));
    let live = Some(now + Duration::seconds(30));
    // (state, lease, claim allowed, finish allowed)
    let table = [
        (OperationState::Queued, None, true, false),
        (OperationState::Running, live, false, true),
        (OperationState::Running, expired, true, true),
        (OperationState::Succeeded, None, false, false),
        (OperationState::Failed, None, false, false),
    ];
    for (state, lease, can_claim, can_finish) in table {
        let mut op = Operation::queued(
            Uuid::new_v4(),
            OperationPayload::DestroyKey {
                key_id: Uuid::new_v4(),
            },
            now,
        );
        op.state = state;
        op.lease_expires_at = lease;
        let mut claimed = op.clone();
        assert_eq!(
            claimed.claim("w1", now, now + Duration::seconds(30)).is_ok(),
            can_claim,
            "{state} claim"
        );
        if can_claim {
            assert_eq!((claimed.state, claimed.attempts), (OperationState::Running, 1));
        }
        assert_eq!(
            op.clone().finish(Ok(()), now).is_ok(),
            can_finish,
            "{state} finish"
        );
    }
}

#[test]
fn failures_keep_their_reason() {
    let now = OffsetDateTime::now_utc();
    let payload = OperationPayload::UpdateKey {
        key_id: Uuid::new_v4(),
        changes: vec![(Attribute::Sign, true)],
    };
    let mut op = Operation::queued(Uuid::new_v4(), payload.clone(), now);
    op.claim("w1", now, now).unwrap();
    op.finish(Err("C_SetAttributeValue: CKR_ATTRIBUTE_READ_ONLY".into()), now)
        .unwrap();
    assert_eq!(op.state, OperationState::Failed);
    assert_eq!(
        op.last_error.as_deref(),
        Some("C_SetAttributeValue: CKR_ATTRIBUTE_READ_ONLY")
    );
}

#[test]
fn kind_names_are_the_key_operations_wire_names_or_job() {
    let id = Uuid::new_v4();
    let named = [
        (
            OperationPayload::CreateKey {
                key_id: id,
                public_key_id: None,
            },
            "keycreate",
        ),
        (
            OperationPayload::UpdateKey {
                key_id: id,
                changes: vec![],
            },
            "keyupdate",
        ),
        (OperationPayload::ReplicateKey { key_id: id }, "keyreplicate"),
        (OperationPayload::DestroyKey { key_id: id }, "keydelete"),
        (OperationPayload::RunJob { job_id: id }, "job"),
    ];
    for (payload, name) in named {
        assert_eq!(payload.kind_name(), name, "{payload:?}");
    }
}

#[test]
fn only_replicate_and_destroy_take_the_linked_half() {
    let (key, public, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let cases = [
        (
            OperationPayload::CreateKey {
                key_id: key,
                public_key_id: Some(public),
            },
            vec![key, public],
            false,
        ),
        (
            OperationPayload::UpdateKey {
                key_id: key,
                changes: vec![],
            },
            vec![key],
            false,
        ),
        (OperationPayload::ReplicateKey { key_id: key }, vec![key], true),
        (OperationPayload::DestroyKey { key_id: key }, vec![key], true),
        (OperationPayload::RunJob { job_id: job }, vec![], false),
    ];
    for (payload, key_ids, includes_link) in cases {
        assert_eq!(payload.key_ids(), key_ids, "{payload:?}");
        assert_eq!(payload.includes_link(), includes_link, "{payload:?}");
    }
}

#[test]
fn a_parked_operation_waits_uncounted_under_its_tokens_name() {
    let now = OffsetDateTime::now_utc();
    let mut op = Operation::queued(
        Uuid::new_v4(),
        OperationPayload::CreateKey {
            key_id: Uuid::new_v4(),
            public_key_id: None,
        },
        now,
    );
    assert!(!op.tried_before());
    let until = now + Duration::seconds(30);
    assert!(
        op.park("t/1", "away".into(), until, now).is_err(),
        "only a running operation"
    );
    op.claim("w:1", now, now + Duration::seconds(30)).unwrap();
    op.park("t/1", "token t is away".into(), until, now).unwrap();
    assert_eq!(
        (op.state(), op.attempts(), op.lease_owner(), op.lease_expires_at()),
        (OperationState::Running, 0, Some("parked:t/1"), Some(until))
    );
    assert_eq!(Operation::parked_on("t/1"), "parked:t/1");
    assert!(
        op.tried_before(),
        "a parked create looks for what it may have made"
    );
    assert_eq!(Operation::restore(stored(&op)).as_ref(), Ok(&op));
    assert!(!op.is_claimable(now) && op.is_claimable(until));
    op.claim("w:2", until, until + Duration::seconds(30)).unwrap();
    assert_eq!(op.attempts(), 1, "parking counted nothing");
}

#[test]
fn a_transient_failure_is_retried_four_times_within_about_thirty_seconds() {
    let delays: Vec<Option<i64>> = (1..=MAX_ATTEMPTS)
        .map(|attempt| Operation::retry_delay(attempt, time::Duration::seconds(2)).map(|d| d.whole_seconds()))
        .collect();
    assert_eq!(delays, [Some(2), Some(4), Some(8), Some(16), None]);
    let now = OffsetDateTime::now_utc();
    let mut op = Operation::queued(
        Uuid::new_v4(),
        OperationPayload::DestroyKey {
            key_id: Uuid::new_v4(),
        },
        now,
    );
    assert!(
        op.retry_later("x".into(), now, now).is_err(),
        "only a running operation"
    );
    op.claim("w", now, now + time::Duration::seconds(30)).unwrap();
    let at = now + time::Duration::seconds(2);
    op.retry_later("C_GenerateKey returned CKR_DEVICE_ERROR".into(), at, now)
        .unwrap();
    assert!(
        !op.is_claimable(now) && op.is_claimable(at),
        "claimable once the delay is over"
    );
    op.claim("other", at, at + time::Duration::seconds(30)).unwrap();
    assert_eq!(op.attempts, 2);
}
