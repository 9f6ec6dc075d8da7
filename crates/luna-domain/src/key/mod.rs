//! Keys: the record of one PKCS#11 object, its vocabulary and its life.
//!
//! A create is accepted as a record `in_progress` (its operation
//! `keycreate`); the runner makes the object and the record becomes
//! `AVAILABLE`, or `FAILED` with the reason. An `AVAILABLE` key may then be
//! updated, replicated or deleted from the HSM, one operation at a time; a
//! delete that succeeds, or a refresh that finds the object on no member,
//! ends it `DELETED`. Every move goes through [`KeyLifecycle::next`].

mod create;
mod lifecycle;
mod update;
mod vocabulary;

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::attribute::AttributeSet;
use crate::error::Result;

pub use create::{
    check_label, check_size, parse_id, CreateKeyRequest, KeyToMake, NewKey, NewKeySpec, MAX_LABEL_CHARS,
};
pub use lifecycle::{KeyEvent, KeyLifecycle};
pub use update::{check_update, AttributeChangeRequest};
pub use vocabulary::{Algorithm, KeyStatus, Mechanism, ObjectType, OperationKind, OperationStatus, Origin};

/// An object's name on its partition when it has a `CKA_ID`: the id in hex
/// and the class as two hex digits (so the halves of a pair differ). Known
/// before the object exists, so a record made by a create carries it from the
/// start and a refresh running meanwhile does not take the object for new.
pub fn object_uid(cka_id: &[u8], object_type: Option<ObjectType>) -> Option<String> {
    if cka_id.is_empty() {
        return None;
    }
    let class: u8 = match object_type {
        Some(ObjectType::PublicKey) => 0x02,
        Some(ObjectType::PrivateKey) => 0x03,
        Some(ObjectType::SecretKey) => 0x04,
        None => 0xff,
    };
    let mut uid = hex::encode(cka_id);
    uid.push_str(&format!("{class:02x}"));
    Some(uid)
}

/// A key record as it was read: a write made from it is a compare-and-set on
/// this, so that it cannot overwrite a change that landed meanwhile (every
/// write moves `updated_at`; the lifecycle is compared too, in case two land
/// within one microsecond), and it writes only what differs from it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyVersion {
    read: Key,
}

impl KeyVersion {
    /// The version `key` is at, to write it back only if it still is.
    pub fn of(key: &Key) -> KeyVersion {
        KeyVersion { read: key.clone() }
    }

    /// The record as it was read.
    pub fn record(&self) -> &Key {
        &self.read
    }

    /// The lifecycle as read.
    pub fn lifecycle(&self) -> &KeyLifecycle {
        &self.read.lifecycle
    }

    /// `updated_at` as read.
    pub fn updated_at(&self) -> OffsetDateTime {
        self.read.updated_at
    }
}

/// The record of one PKCS#11 key object (one half of an RSA pair, or an
/// AES key): its data ([`KeyData`], read and written through `Deref`) and
/// its lifecycle, which is private: it moves only through [`Key::apply`],
/// and no code can set a whole lifecycle over a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    data: KeyData,
    pub(crate) lifecycle: KeyLifecycle,
}

/// What a key record holds besides its lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyData {
    /// The record's id. A key made here has the secret or private record's
    /// id as its objects' `CKA_ID`, on both halves of a pair.
    pub id: Uuid,
    /// The CCKM partition (HA group) the key lives on.
    pub partition_id: Uuid,
    /// That partition's label, as key lists report it.
    pub partition_label: String,
    /// The object's `CKA_LABEL`.
    pub label: String,
    /// Unknown until the object exists (the reference reports `""`).
    pub algorithm: Option<Algorithm>,
    /// The object's class; unknown, like `algorithm`, until it exists.
    pub object_type: Option<ObjectType>,
    /// The mechanism the user asked for; `None` for keys found by refresh.
    pub mechanism: Option<Mechanism>,
    /// The mechanism the token actually ran, when a remap replaced the requested one.
    pub generated_with: Option<Mechanism>,
    /// Key length in bits (RSA modulus or AES key).
    pub size: u32,
    /// The boolean attributes true on the object (for a wrap-with-trusted
    /// key, `CKA_EXTRACTABLE` as the user set it, not as the token has it).
    pub attributes: AttributeSet,
    /// The object's `CKA_ID`, the identity by which the service finds it on every member.
    pub cka_id: Vec<u8>,
    /// The object's name on its partition: see [`object_uid`], or `fp-` and
    /// the fingerprint for an object without `CKA_ID`.
    pub object_uid: String,
    /// SHA-256 over the object's public identity (never a secret); stays
    /// the same when attributes change.
    pub sha_256_fingerprint: String,
    /// Member serial number → `"available"` or why the key is not there.
    pub replication_info: BTreeMap<String, String>,
    /// Every member holds the key.
    pub replicated: bool,
    /// Made through this service (false for keys a refresh found).
    pub byok_key: bool,
    /// Where the key came from.
    pub origin: Origin,
    /// Lower-case hex; empty until known and for AES.
    pub modulus: String,
    /// The RSA public exponent; 0 for AES.
    pub exponent: u64,
    /// The record of the other half of an RSA pair; `None` for AES, and for
    /// a half found by refresh until its partner has a record.
    pub link_id: Option<Uuid>,
    /// The key's partition is an HA group (several members).
    pub ha_enabled: bool,
    /// When the record was made (accepted, or found by a refresh).
    pub created_at: OffsetDateTime,
    /// When the record last changed; every write moves it, which is what
    /// [`KeyVersion`] compares.
    pub updated_at: OffsetDateTime,
}

impl std::ops::Deref for Key {
    type Target = KeyData;

    fn deref(&self) -> &KeyData {
        &self.data
    }
}

impl std::ops::DerefMut for Key {
    fn deref_mut(&mut self) -> &mut KeyData {
        &mut self.data
    }
}

impl Key {
    /// A record with its data and lifecycle: one a create or a refresh
    /// begins ([`KeyLifecycle::creating`], [`KeyLifecycle::discovered`]), or
    /// one read back from storage ([`KeyLifecycle::restore`]). Afterwards
    /// the lifecycle moves only through [`Key::apply`].
    pub fn new(data: KeyData, lifecycle: KeyLifecycle) -> Key {
        Key { data, lifecycle }
    }

    /// Status and last operation.
    pub fn lifecycle(&self) -> &KeyLifecycle {
        &self.lifecycle
    }

    /// Moves the record's life on, stamping `updated_at` with `now`. A
    /// refused event leaves the record as it was.
    pub fn apply(&mut self, event: &KeyEvent, now: OffsetDateTime) -> Result<()> {
        self.lifecycle = self.lifecycle.next(event)?;
        self.updated_at = now;
        Ok(())
    }
}
