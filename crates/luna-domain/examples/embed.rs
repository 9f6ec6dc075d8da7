//! Embedding luna-domain in another CCKM service: a create validated, its key
//! and queue entry driven to the end, a list query parsed, and a refresh job
//! planned, each step printed. No token, database or HTTP: the service
//! around it would supply those, and the ids and clocks used here.
//!
//! Run with `cargo run -p luna-domain --example embed`.

// Printing what happens is this program's purpose.
#![allow(clippy::print_stdout)]

use std::error::Error;

use luna_domain::key::object_uid;
use luna_domain::query::{list_params, parse_list_query, KeyFilters, ListQuery};
use luna_domain::refresh::{first_sight, plan, BeforeScan, MemberScan, ObservedObject, RefreshScope};
use luna_domain::{
    Algorithm, Attribute, CreateKeyRequest, DomainError, Job, JobEvent, JobRequest, JobScope, JobType, Key,
    KeyEvent, KeyStatus, KeyToMake, NewKey, NewKeySpec, ObjectType, OperationKind, Partition,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

type Outcome<T = ()> = Result<T, Box<dyn Error>>;

fn main() -> Outcome {
    let now = OffsetDateTime::now_utc();
    let spec = validate_a_create()?;
    let key = run_the_create(&spec, now)?;
    delete_the_key(key, now + Duration::seconds(10))?;
    parse_a_list_query()?;
    refresh_a_partition(now + Duration::minutes(5))?;
    println!("\nevery step behaved as the domain says it should");
    Ok(())
}

/// The refusal a call should give; an answer is a bug in this walk.
fn refusal<T: std::fmt::Debug>(result: luna_domain::Result<T>) -> Outcome<DomainError> {
    match result {
        Ok(value) => Err(format!("expected a refusal, got {value:?}").into()),
        Err(error) => Ok(error),
    }
}

fn validate_a_create() -> Outcome<NewKeySpec> {
    println!("== 1. validating create-key requests");
    let request = CreateKeyRequest {
        label: Some("payments-kek".into()),
        size: Some(256),
        partition_id: Some("fe192148-82eb-403f-96b2-125bf28d3824".into()),
        mechanism: Some("CKM_AES_KEY_GEN".into()),
        attributes: vec!["CKA_WRAP".into(), "CKA_UNWRAP".into(), "CKA_SENSITIVE".into()],
    };
    let spec = request.clone().validate()?;
    println!(
        "accepted: {} {} bits ({}), attributes {:?}",
        spec.mechanism,
        spec.size,
        spec.mechanism.algorithm(),
        spec.attributes.names()
    );
    for bad in [
        CreateKeyRequest {
            size: Some(2048),
            ..request.clone()
        },
        CreateKeyRequest {
            mechanism: Some("CKM_DES_KEY_GEN".into()),
            ..request.clone()
        },
        CreateKeyRequest {
            label: None,
            ..request
        },
    ] {
        println!("refused (400): {}", refusal(bad.validate())?);
    }
    Ok(spec)
}

/// The create as a service runs it: the record and its queue entry written
/// together, then a worker claims the entry, makes the key and finishes.
fn run_the_create(spec: &NewKeySpec, accepted: OffsetDateTime) -> Outcome<Key> {
    println!("\n== 2. a key's life: create");
    // The partition as the service's store would give it back.
    let partition = Partition {
        id: spec.partition_id,
        connection_id: Uuid::new_v4(),
        partition_label: "partition-a".into(),
        serial_number: "1234".into(),
        ha_enabled: false,
        remap_rsa_mechanisms: true,
        members: Vec::new(),
        created_at: accepted,
        updated_at: accepted,
    };
    // The records and the queue entry a create writes together; the ids are
    // the caller's.
    let NewKey { keys, mut operation } = spec.new_key(&partition, Uuid::new_v4, accepted);
    let mut key = keys.into_iter().next().ok_or("an AES create makes one record")?;
    println!(
        "a token is asked to make: {:?}",
        KeyToMake::of(std::slice::from_ref(&key))?
    );
    println!(
        "accepted: key {} is {} (operation {} {:?}), queue entry {}",
        key.object_uid,
        key.lifecycle().status(),
        key.lifecycle().operation(),
        key.lifecycle()
            .operation_status()
            .wire(key.lifecycle().operation()),
        operation.state()
    );
    let busy = refusal(key.lifecycle().next(&KeyEvent::Begin(OperationKind::KeyUpdate)))?;
    println!("a PATCH meanwhile is refused (409): {busy}");

    let claimed = accepted + Duration::seconds(1);
    operation.claim("worker-1", claimed, claimed + Duration::seconds(30))?;
    println!(
        "worker-1 claims it: {}, attempt {}",
        operation.state(),
        operation.attempts()
    );
    // The token made the key; the record and the queue entry end together.
    let done = claimed + Duration::seconds(1);
    key.apply(&KeyEvent::Succeeded, done)?;
    operation.finish(Ok(()), done)?;
    println!(
        "made: key is {} (operation_status {:?}), queue entry {}",
        key.lifecycle().status(),
        key.lifecycle()
            .operation_status()
            .wire(key.lifecycle().operation()),
        operation.state()
    );
    if key.lifecycle().status() != KeyStatus::Available {
        return Err("a finished create leaves the key AVAILABLE".into());
    }
    Ok(key)
}

fn delete_the_key(mut key: Key, at: OffsetDateTime) -> Outcome {
    println!("\n== 3. a key's life: delete from the HSM");
    key.apply(&KeyEvent::Begin(OperationKind::KeyDestroy), at)?;
    println!(
        "delete begun: {} {} {}",
        key.lifecycle().status(),
        key.lifecycle().operation(),
        key.lifecycle().operation_status()
    );
    key.apply(&KeyEvent::Succeeded, at)?;
    println!("deleted on every member: {}", key.lifecycle().status());
    let again = refusal(
        key.lifecycle()
            .next(&KeyEvent::Begin(OperationKind::KeyReplicate)),
    )?;
    println!("replicating it now is refused (409): {again}");
    let illegal = refusal(key.apply(&KeyEvent::Vanished, at))?;
    println!("and so is any move the machine lacks: {illegal}");
    Ok(())
}

fn parse_a_list_query() -> Outcome {
    println!("\n== 4. list queries");
    let pairs = |query: &str| -> Vec<(String, String)> {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    };
    let text = "status=AVAILABLE&algorithm=rsa&sort=-createdAt,label&skip=20&limit=50";
    let query: ListQuery<KeyFilters> = parse_list_query(&pairs(text))?;
    println!("{text}");
    println!(
        "  filters: status {:?}, algorithm {:?}",
        query.filters.status, query.filters.algorithm
    );
    println!("  sort: {:?}", query.sort);
    println!("  page: {:?}", query.page);
    for bad in ["limit=5000", "colour=red", "label=a&label=b", "sort=label,"] {
        let error = refusal(parse_list_query::<KeyFilters>(&pairs(bad)))?;
        println!("{bad} refused (400): {error}");
    }
    println!(
        "the key list takes {} parameters:",
        list_params::<KeyFilters>().len()
    );
    for param in list_params::<KeyFilters>().iter().take(4) {
        println!("  {}: {}", param.name, param.kind.describe());
    }
    println!("  ...");
    Ok(())
}

/// A refresh job on a two-member HA partition: one member holds a key nobody
/// recorded, and a recorded key is on neither member any more.
fn refresh_a_partition(started: OffsetDateTime) -> Outcome {
    println!("\n== 5. a refresh job");
    let partition_id = Uuid::new_v4();
    let scope = match (JobRequest {
        partitions: Some(vec![partition_id.to_string()]),
        synchronize_all: None,
    })
    .validate()?
    {
        JobScope::Partitions(ids) => ids,
        JobScope::All => return Err("the request listed one partition".into()),
    };
    let both = JobRequest {
        partitions: Some(vec![partition_id.to_string()]),
        synchronize_all: Some(true),
    };
    println!(
        "a job request with both scopes is refused (400): {}",
        refusal(both.validate())?
    );
    let mut job = Job::new(Uuid::new_v4(), JobType::Refresh, scope, started);
    println!(
        "job {} {} over {} partition(s)",
        job.job_type,
        job.lifecycle().status(),
        job.partitions.len()
    );

    let scope = RefreshScope {
        partition_id,
        partition_label: "ha-group".into(),
        ha_enabled: true,
        members: vec!["serial-1".into(), "serial-2".into()],
    };
    let rsa_half = |object_type: ObjectType, label: &str| ObservedObject {
        object_uid: object_uid(b"\x0e", Some(object_type)).unwrap_or_default(),
        object_type,
        algorithm: Some(Algorithm::Rsa),
        label: label.into(),
        cka_id: b"\x0e".to_vec(),
        size: 2048,
        modulus: "c0ffee".into(),
        exponent: 65537,
        attributes: [Attribute::Token, Attribute::Private].into_iter().collect(),
        wrap_with_trusted: false,
        fingerprint: format!("fingerprint of the {object_type}"),
    };
    let gone = ObservedObject {
        object_uid: object_uid(b"\x0c", Some(ObjectType::SecretKey)).unwrap_or_default(),
        object_type: ObjectType::SecretKey,
        algorithm: Some(Algorithm::Aes),
        label: "retired".into(),
        cka_id: b"\x0c".to_vec(),
        size: 256,
        modulus: String::new(),
        exponent: 0,
        attributes: [Attribute::Token, Attribute::Encrypt].into_iter().collect(),
        wrap_with_trusted: false,
        fingerprint: "fingerprint of the retired key".into(),
    };
    // Recorded by an earlier refresh, well before this scan began.
    let records = vec![first_sight(
        &scope,
        &gone,
        Uuid::new_v4(),
        started - Duration::hours(1),
    )];
    let before = BeforeScan::of(&records, started, Duration::seconds(60));
    let seen = [
        MemberScan::Read(vec![
            rsa_half(ObjectType::PrivateKey, "made with another tool"),
            rsa_half(ObjectType::PublicKey, "made with another tool"),
        ]),
        MemberScan::Read(vec![]),
    ];
    let now = started + Duration::seconds(3);
    let planned = plan(&scope, &before, &records, &seen, now, Uuid::new_v4);
    for key in &planned.inserted {
        println!(
            "insert {} {} {:?} origin {}, linked to {:?}, replication {:?}",
            key.id,
            key.object_type.map_or("", |t| t.as_str()),
            key.label,
            key.origin,
            key.link_id,
            key.replication_info
        );
    }
    for (key, read_at) in &planned.updated {
        println!(
            "update {} {:?}: {}, if still as read at {}",
            key.id,
            key.label,
            key.lifecycle().status(),
            read_at.updated_at()
        );
    }
    let linked = planned.inserted.len() == 2 && planned.inserted.iter().all(|k| k.link_id.is_some());
    let deleted = planned
        .updated
        .iter()
        .any(|(k, _)| k.id == records[0].id && k.lifecycle().status() == KeyStatus::Deleted);
    if !(linked && deleted) {
        return Err("the plan should insert a linked pair and end the retired key DELETED".into());
    }

    job.apply(JobEvent::Complete, now)?;
    println!("job {} at {:?}", job.lifecycle().status(), job.completed_at);
    println!(
        "cancelling it now is refused (409): {}",
        refusal(job.apply(JobEvent::RequestCancel, now))?
    );
    Ok(())
}
