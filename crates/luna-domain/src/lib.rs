//! The Luna HSM key domain of the CipherTrust CCKM "Luna HSM keys" API: keys,
//! partitions, jobs and durable operations, their validation and their state
//! machines.
//!
//! Invariant: this crate does no IO and knows no diesel, actix or PKCS#11
//! types, so that any CCKM service can embed it. Only serde's traits appear,
//! to give enums their one spelling; JSON itself belongs to the edge. Ids and
//! clocks come from the caller too: nothing here draws a random id or reads
//! the time, so every outcome can be predicted in a test.
//!
//! Other rules every module keeps:
//! - every state change goes through a `next` or `apply` that refuses an
//!   illegal move with a [`DomainError`]; no status is overwritten directly;
//! - every refusal is a sentence saying what was wrong and what is allowed,
//!   fit to show a user as is ([`DomainError::Invalid`] is a 400,
//!   [`DomainError::Conflict`] and [`DomainError::IllegalTransition`] a 409);
//! - every closed set of names (mechanisms, statuses, attributes, sort
//!   fields) has one spelling, the reference's, with `as_str`, `FromStr`,
//!   `Display` and serde all going through it.
//!
//! Where things are: [`key`] (key records, create and PATCH validation, the
//! key lifecycle), [`attribute`], [`partition`] (connections, HA members),
//! [`job`] (refresh and ha_synchronize), [`operation`] (the durable queue),
//! [`idempotency`], [`query`] (list queries) and [`refresh`] (what a refresh
//! writes). `examples/embed.rs` walks through all of it and prints each step
//! (`cargo run -p luna-domain --example embed`).
//!
//! # Validating a create-key request
//!
//! The edge fills a [`CreateKeyRequest`] from the body as it came, every field
//! optional; [`CreateKeyRequest::validate`] either gives a [`NewKeySpec`] that
//! passed every rule, or the sentence for the first broken one.
//!
//! ```
//! use luna_domain::{Algorithm, CreateKeyRequest, DomainError, Mechanism, ObjectType};
//!
//! let request = CreateKeyRequest {
//!     label: Some("payments-kek".into()),
//!     size: Some(256),
//!     partition_id: Some("fe192148-82eb-403f-96b2-125bf28d3824".into()),
//!     mechanism: Some("CKM_AES_KEY_GEN".into()),
//!     attributes: vec!["CKA_WRAP".into(), "CKA_ENCRYPT".into(), "CKA_UNWRAP".into()],
//! };
//! let spec = request.clone().validate()?;
//! assert_eq!(spec.mechanism, Mechanism::AesKeyGen);
//! assert_eq!(spec.mechanism.algorithm(), Algorithm::Aes);
//! assert_eq!(spec.mechanism.object_types(), [ObjectType::SecretKey]);
//! // Attributes come back in the canonical order, whatever order was sent.
//! assert_eq!(spec.attributes.names(), ["CKA_ENCRYPT", "CKA_WRAP", "CKA_UNWRAP"]);
//!
//! // An RSA size for an AES mechanism is refused, saying what is allowed.
//! let refused = CreateKeyRequest { size: Some(2048), ..request }.validate().unwrap_err();
//! assert!(matches!(refused, DomainError::Invalid(_)));
//! assert_eq!(
//!     refused.to_string(),
//!     "size 2048 is not allowed for CKM_AES_KEY_GEN; allowed: 128, 192, 256"
//! );
//! # Ok::<(), DomainError>(())
//! ```
//!
//! # Driving a key through its lifecycle
//!
//! A key record is accepted `in_progress` with the operation `keycreate`,
//! becomes `AVAILABLE` when the token has made it, takes one operation at a
//! time, and ends `DELETED`. The service makes the record (ids and times are
//! its own) and tells it what happened with [`KeyEvent`]s; [`Key::apply`]
//! refuses what the machine does not allow and leaves the record as it was.
//!
//! ```
//! use time::{Duration, OffsetDateTime};
//! use luna_domain::{
//!     CreateKeyRequest, DomainError, KeyEvent, KeyStatus, NewKey, OperationKind, OperationStatus,
//!     Partition,
//! };
//! use uuid::Uuid;
//!
//! let spec = CreateKeyRequest {
//!     label: Some("payments-kek".into()),
//!     size: Some(256),
//!     partition_id: Some("fe192148-82eb-403f-96b2-125bf28d3824".into()),
//!     mechanism: Some("CKM_AES_KEY_GEN".into()),
//!     attributes: vec!["CKA_ENCRYPT".into()],
//! }
//! .validate()?;
//! let accepted = OffsetDateTime::now_utc();
//! // The partition as the service's store gives it back.
//! let partition = Partition {
//!     id: spec.partition_id,
//!     connection_id: Uuid::new_v4(),
//!     partition_label: "partition-a".into(),
//!     serial_number: "1234".into(),
//!     ha_enabled: false,
//!     remap_rsa_mechanisms: true,
//!     members: Vec::new(),
//!     created_at: accepted,
//!     updated_at: accepted,
//! };
//! // The record and its queued operation; the ids are the caller's. The
//! // record's id is the object's CKA_ID: the object is findable on every
//! // member, and its object_uid is known before it exists.
//! let NewKey { keys, operation } = spec.new_key(&partition, Uuid::new_v4, accepted);
//! let mut key = keys.into_iter().next().unwrap();
//! assert_eq!(key.cka_id, key.id.as_bytes().to_vec());
//! assert!(!operation.tried_before());
//! assert_eq!(key.lifecycle().status(), KeyStatus::InProgress);
//! // While the create runs the key takes no other operation: a 409 to retry later.
//! let busy = key.lifecycle().next(&KeyEvent::Begin(OperationKind::KeyUpdate)).unwrap_err();
//! assert!(matches!(busy, DomainError::Conflict(_)));
//!
//! // The runner made the object.
//! let made = accepted + Duration::seconds(1);
//! key.apply(&KeyEvent::Succeeded, made)?;
//! assert_eq!(key.lifecycle().status(), KeyStatus::Available);
//! assert_eq!(key.lifecycle().operation_status().wire(key.lifecycle().operation()), "created");
//! assert_eq!(key.updated_at, made);
//!
//! // A delete from the HSM: begun, then done on every member.
//! key.apply(&KeyEvent::Begin(OperationKind::KeyDestroy), made)?;
//! assert!(key.lifecycle().is_busy());
//! key.apply(&KeyEvent::Succeeded, made)?;
//! assert_eq!(key.lifecycle().status(), KeyStatus::Deleted);
//! assert_eq!(key.lifecycle().operation_status(), OperationStatus::Completed);
//!
//! // DELETED is final: the refusal names the state and the event.
//! let before = key.clone();
//! let refused = key.apply(&KeyEvent::Vanished, made).unwrap_err();
//! assert_eq!(refused.to_string(), "key cannot go from DELETED/keydelete/completed on vanished");
//! assert_eq!(key, before);
//! # Ok::<(), DomainError>(())
//! ```
//!
//! # Parsing a list query
//!
//! The edge hands over the query string's decoded `(name, value)` pairs;
//! [`query::parse_list_query`] gives typed filters, the sort and the page.
//! An unknown or repeated parameter is refused, so a typo never lists
//! everything.
//!
//! ```
//! use luna_domain::query::{parse_list_query, Direction, KeyFilters, KeySortField, ListQuery, Page, SortKey};
//! use luna_domain::{Algorithm, DomainError, KeyStatus};
//!
//! let pairs = |query: &[(&str, &str)]| -> Vec<(String, String)> {
//!     query.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
//! };
//! let query: ListQuery<KeyFilters> = parse_list_query(&pairs(&[
//!     ("status", "AVAILABLE"),
//!     ("algorithm", "aes"),
//!     ("sort", "-createdAt,label"),
//!     ("skip", "20"),
//! ]))?;
//! assert_eq!(query.filters.status, Some(KeyStatus::Available));
//! assert_eq!(query.filters.algorithm, Some(Algorithm::Aes));
//! assert_eq!(query.filters.label, None, "a filter not given matches everything");
//! assert_eq!(
//!     query.sort,
//!     [
//!         SortKey { field: KeySortField::CreatedAt, direction: Direction::Descending },
//!         SortKey { field: KeySortField::Label, direction: Direction::Ascending },
//!     ]
//! );
//! assert_eq!(query.page, Page { skip: 20, limit: 10 }, "limit defaults to 10");
//!
//! let refused = parse_list_query::<KeyFilters>(&pairs(&[("limit", "5000")])).unwrap_err();
//! assert_eq!(refused.to_string(), "limit must be a whole number from 1 to 1000; got \"5000\"");
//! let refused = parse_list_query::<KeyFilters>(&pairs(&[("status", "gone")])).unwrap_err();
//! assert_eq!(
//!     refused.to_string(),
//!     "status \"gone\" is not supported; allowed: in_progress, AVAILABLE, DELETED, FAILED"
//! );
//! # Ok::<(), DomainError>(())
//! ```
//!
//! [`query::list_params`] describes the same parameters (name and accepted
//! values) for an OpenAPI document or a command line's flags.
//!
//! # Planning a refresh
//!
//! The service scans every member of a partition and hands [`refresh::plan`]
//! the records and what each member holds; the plan says which records to
//! insert (objects made outside the service) and which to update, each with
//! the version it was read at for a compare-and-set. Ids of inserted records
//! come from the caller's `new_id`.
//!
//! ```
//! use time::{Duration, OffsetDateTime};
//! use luna_domain::key::object_uid;
//! use luna_domain::refresh::{first_sight, plan, BeforeScan, MemberScan, ObservedObject, RefreshScope};
//! use luna_domain::{Algorithm, Attribute, KeyStatus, ObjectType, Origin};
//! use uuid::Uuid;
//!
//! let scope = RefreshScope {
//!     partition_id: Uuid::new_v4(),
//!     partition_label: "ha-group".into(),
//!     ha_enabled: true,
//!     members: vec!["serial-1".into(), "serial-2".into()],
//! };
//! let aes = |cka_id: u8, label: &str| ObservedObject {
//!     object_uid: object_uid(&[cka_id], Some(ObjectType::SecretKey)).unwrap_or_default(),
//!     object_type: ObjectType::SecretKey,
//!     algorithm: Some(Algorithm::Aes),
//!     label: label.into(),
//!     cka_id: vec![cka_id],
//!     size: 256,
//!     modulus: String::new(),
//!     exponent: 0,
//!     attributes: [Attribute::Token, Attribute::Encrypt].into_iter().collect(),
//!     wrap_with_trusted: false,
//!     fingerprint: format!("fingerprint-{cka_id}"),
//! };
//! let (kept, outside, gone) = (aes(0xaa, "kept"), aes(0xbb, "made elsewhere"), aes(0xcc, "gone"));
//!
//! // Records of `kept` and `gone` from an earlier refresh, before this scan began.
//! let earlier = OffsetDateTime::now_utc();
//! let records = vec![
//!     first_sight(&scope, &kept, Uuid::new_v4(), earlier),
//!     first_sight(&scope, &gone, Uuid::new_v4(), earlier),
//! ];
//! let scan_began = earlier + Duration::seconds(120);
//! let before = BeforeScan::of(&records, scan_began, Duration::seconds(60));
//!
//! // The first member holds `kept` and an object nobody recorded; the second only `kept`.
//! let seen = [
//!     MemberScan::Read(vec![kept.clone(), outside.clone()]),
//!     MemberScan::Read(vec![kept.clone()]),
//! ];
//! let mut next = 0u128;
//! let new_id = || {
//!     next += 1;
//!     Uuid::from_u128(next)
//! };
//! let now = scan_began + Duration::seconds(5);
//! let planned = plan(&scope, &before, &records, &seen, now, new_id);
//!
//! // Inserted: the outside object, with the caller's id.
//! assert_eq!(planned.inserted.len(), 1);
//! let found = &planned.inserted[0];
//! assert_eq!((found.id, found.label.as_str()), (Uuid::from_u128(1), "made elsewhere"));
//! assert_eq!((found.origin, found.lifecycle().status()), (Origin::External, KeyStatus::Available));
//! assert_eq!(found.replication_info["serial-2"], "the key is not on this member");
//! assert!(!found.replicated);
//!
//! // Updated: `kept` is now known to be on both members; `gone` is on none.
//! let [(kept_now, kept_read_at), (gone_now, _)] = planned.updated.as_slice() else {
//!     panic!("two updates expected: {:?}", planned.updated);
//! };
//! assert_eq!(kept_now.id, records[0].id);
//! assert!(kept_now.replicated);
//! assert_eq!(kept_read_at.updated_at(), earlier, "written only if still as read");
//! assert_eq!((gone_now.id, gone_now.lifecycle().status()), (records[1].id, KeyStatus::Deleted));
//!
//! // Records the scan cannot vouch for (here: none known before it began)
//! // are never concluded DELETED: their objects may have been made after
//! // the scan went by.
//! let unvouched = plan(&scope, &BeforeScan::default(), &records, &seen, now, Uuid::new_v4);
//! let written: Vec<Uuid> = unvouched.updated.iter().map(|(k, _)| k.id).collect();
//! assert_eq!(written, [records[0].id], "`gone` is left for a later refresh to judge");
//! ```

#![deny(missing_docs)]

mod wire;

pub mod attribute;
pub mod error;
pub mod idempotency;
pub mod job;
pub mod key;
mod machine;
pub mod operation;
pub mod partition;
pub mod query;
pub mod refresh;
pub mod schedule;
pub mod server;
pub mod xks;

pub use attribute::{Attribute, AttributeSet};
pub use error::{DomainError, Result};
pub use job::{Job, JobData, JobEvent, JobLifecycle, JobRequest, JobScope, JobStatus, JobType, ScheduledBy};
pub use key::{
    Algorithm, CreateKeyRequest, Key, KeyData, KeyEvent, KeyLifecycle, KeyStatus, KeyToMake, KeyVersion,
    Mechanism, NewKey, NewKeySpec, ObjectType, OperationKind, OperationStatus, Origin,
};
pub use operation::{Operation, OperationPayload, OperationState, Requester, StoredOperation};
pub use partition::{
    Connection, ConnectionCheck, ConnectionRequest, ConnectionSpec, Member, MemberSpec, Partition,
};
pub use server::{HsmServer, Product, ServerCertificate, ServerRequest};
