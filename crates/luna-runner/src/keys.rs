//! The key operations a worker runs: create (and spread to the HA members),
//! update, replicate and destroy, each on the partition's member tokens.

use std::sync::Arc;

use luna_domain::{Key, KeyVersion, Member, Operation, Partition};
use luna_pkcs11::{GenerateRequest, ObjectDescription};
use uuid::Uuid;

use crate::failure::{Failure, Outcome};
use crate::runner::{Accepted, Runner};
use crate::transfer::{transfer, TransferRefused};

/// A member token and the key's object on it.
pub(crate) type Found = (Arc<dyn luna_pkcs11::Token>, ObjectDescription);

impl Runner {
    /// The key records an operation acts on, and their partition.
    pub(crate) fn load(&self, ids: &[Uuid]) -> Result<(Vec<Key>, Partition), Failure> {
        let keys = ids
            .iter()
            .map(|id| self.read_key(*id))
            .collect::<Result<Vec<_>, _>>()?;
        self.with_partition(keys)
    }

    /// A key's record and its linked half's (an operation on a pair acts
    /// on both), and their partition: each record read once.
    pub(crate) fn load_linked(&self, key_id: Uuid) -> Result<(Vec<Key>, Partition), Failure> {
        let key = self.read_key(key_id)?;
        let link = key.link_id.map(|id| self.read_key(id)).transpose()?;
        self.with_partition(std::iter::once(key).chain(link).collect())
    }

    fn read_key(&self, id: Uuid) -> Result<Key, Failure> {
        Ok(self
            .store
            .get_key(id)
            .map_err(Failure::store("the key record could not be read"))?
            .ok_or_else(|| format!("key {id} no longer exists here"))?)
    }

    fn with_partition(&self, keys: Vec<Key>) -> Result<(Vec<Key>, Partition), Failure> {
        let partition_id = keys
            .first()
            .map(|k| k.partition_id)
            .ok_or("the operation names no key")?;
        let partition = self
            .store
            .get_partition(partition_id)
            .map_err(Failure::store("the partition record could not be read"))?
            .ok_or("the key's partition no longer exists here")?;
        Ok((keys, partition))
    }

    pub(crate) fn create(
        &self,
        op: &Operation,
        key_id: Uuid,
        public_key_id: Option<Uuid>,
        accepted: Option<Accepted>,
    ) -> Outcome {
        let ids: Vec<Uuid> = std::iter::once(key_id).chain(public_key_id).collect();
        // A retry, or an operation claimed from the queue, reads what is stored.
        let (mut keys, partition) = match accepted {
            Some(accepted) if accepted.keys.iter().map(|k| k.id).eq(ids.iter().copied()) => {
                (accepted.keys, accepted.partition)
            }
            _ => self.load(&ids)?,
        };
        let read: Vec<KeyVersion> = keys.iter().map(KeyVersion::of).collect();
        let remap = partition.remap_rsa_mechanisms;
        let first = partition.members.first().ok_or("the partition has no members")?;
        let token = self.tokens.member(partition.connection_id, first)?;
        // The records hold what was requested until the token says what it made.
        let to_make = luna_domain::KeyToMake::of(&keys).map_err(|e| Failure::Final(e.to_string()))?;
        let in_domain = match partition.members.get(1) {
            Some(peer) => token
                .shares_domain_with(&peer.serial_number)
                .map_err(Failure::token)?,
            None => false,
        };
        let mut attributes = to_make.attributes;
        if in_domain {
            // Within a cloning domain only the domain may wrap the key, so it is
            // made extractable on the token (to clone) whatever the user chose;
            // the record reports CKA_EXTRACTABLE as the user set it.
            attributes.insert(luna_domain::Attribute::Extractable);
        }
        let request = GenerateRequest {
            cka_id: to_make.cka_id,
            label: to_make.label,
            mechanism: to_make.mechanism,
            size: to_make.size,
            attributes,
            remap,
            retry: op.tried_before(),
            wrap_with_trusted: in_domain,
        };
        let generated = token.generate(&request).map_err(Failure::token)?;
        for key in &mut keys {
            let object = generated
                .objects
                .iter()
                .find(|d| d.object_type == key.object_type)
                .ok_or_else(|| {
                    format!(
                        "the token made no {} object",
                        key.object_type.map_or("", |t| t.as_str())
                    )
                })?;
            describe_into(key, object);
            key.generated_with = Some(generated.generated_with);
        }
        let info = self.spread(
            &partition,
            first,
            token.as_ref(),
            &generated.objects,
            op.tried_before(),
        )?;
        for key in &mut keys {
            key.replicated = info.values().all(|s| s == AVAILABLE);
            key.replication_info = info.clone();
        }
        Ok(keys.into_iter().zip(read).collect())
    }

    /// Clones `objects` from `source` (on member `from`) to every other
    /// member; returns each member's state. A retry first looks for copies an
    /// earlier attempt made.
    pub(crate) fn spread(
        &self,
        partition: &Partition,
        from: &Member,
        source: &dyn luna_pkcs11::Token,
        objects: &[ObjectDescription],
        retry: bool,
    ) -> Result<std::collections::BTreeMap<String, String>, Failure> {
        let mut info = std::collections::BTreeMap::new();
        for member in &partition.members {
            let state = if member.serial_number == from.serial_number {
                AVAILABLE.to_owned()
            } else {
                cloned_state(
                    member,
                    self.clone_to(partition, member, source, &from.serial_number, objects, retry),
                )?
            };
            info.insert(member.serial_number.clone(), state);
        }
        Ok(info)
    }

    pub(crate) fn clone_to(
        &self,
        partition: &Partition,
        member: &Member,
        source: &dyn luna_pkcs11::Token,
        source_serial: &str,
        objects: &[ObjectDescription],
        retry: bool,
    ) -> Result<(), TransferRefused> {
        let target = self.tokens.member(partition.connection_id, member)?;
        let present: Vec<ObjectDescription> = match objects.first() {
            Some(first) if retry => target.find_by_id(&first.cka_id)?,
            _ => Vec::new(),
        };
        for object in objects {
            if present.iter().any(|p| p.object_type == object.object_type) {
                continue;
            }
            transfer(
                source,
                source_serial,
                target.as_ref(),
                &member.serial_number,
                object,
            )?;
        }
        Ok(())
    }

    pub(crate) fn update(&self, key_id: Uuid, changes: &[(luna_domain::Attribute, bool)]) -> Outcome {
        let (mut keys, partition) = self.load(&[key_id])?;
        let read = KeyVersion::of(&keys[0]);
        let key = &mut keys[0];
        let mut described = None;
        for member in &partition.members {
            let Some((token, object)) = self.find_on(&partition, member, key)? else {
                continue;
            };
            // CKA_EXTRACTABLE of a CKA_WRAP_WITH_TRUSTED key stays true on the
            // token (the cloning domain needs it); the record carries the change.
            let on_token: Vec<(luna_domain::Attribute, bool)> = changes
                .iter()
                .copied()
                .filter(|(a, _)| !(object.wrap_with_trusted && *a == luna_domain::Attribute::Extractable))
                .collect();
            if !on_token.is_empty() {
                token
                    .set_attributes(object.handle, &on_token)
                    .map_err(Failure::token)?;
            }
            described = Some(token.describe(object.handle).map_err(Failure::token)?);
        }
        let object = described.ok_or("the key's object is on no partition member any more")?;
        describe_into(key, &object);
        for (attribute, value) in changes {
            if *attribute == luna_domain::Attribute::Extractable {
                key.attributes.set(*attribute, *value);
            }
        }
        Ok(keys.into_iter().map(|key| (key, read.clone())).collect())
    }

    pub(crate) fn replicate(&self, key_id: Uuid) -> Outcome {
        let (mut keys, partition) = self.load_linked(key_id)?;
        let read: Vec<KeyVersion> = keys.iter().map(KeyVersion::of).collect();
        // Find a member that holds every half, and what each member holds.
        let mut holder: Option<(&Member, Arc<dyn luna_pkcs11::Token>, Vec<ObjectDescription>)> = None;
        let mut lacking = Vec::new();
        let mut info = std::collections::BTreeMap::new();
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(failure) => {
                    info.insert(member.serial_number.clone(), failure.reason().to_owned());
                    continue;
                }
            };
            let found = token.find_by_id(&keys[0].cka_id).map_err(Failure::token)?;
            let halves: Vec<ObjectDescription> = keys
                .iter()
                .filter_map(|k| found.iter().find(|d| d.object_type == k.object_type).cloned())
                .collect();
            if halves.len() == keys.len() {
                info.insert(member.serial_number.clone(), AVAILABLE.to_owned());
                if holder.is_none() {
                    holder = Some((member, token, halves));
                }
            } else {
                lacking.push(member);
            }
        }
        let (from, source, objects) = holder.ok_or("no partition member holds the whole key")?;
        for member in lacking {
            let cloned = self.clone_to(
                &partition,
                member,
                source.as_ref(),
                &from.serial_number,
                &objects,
                true,
            );
            info.insert(member.serial_number.clone(), cloned_state(member, cloned)?);
        }
        let everywhere = info.values().all(|s| s == AVAILABLE);
        for key in &mut keys {
            key.replication_info = info.clone();
            key.replicated = everywhere;
        }
        if everywhere {
            Ok(keys.into_iter().zip(read).collect())
        } else {
            let reasons: Vec<String> = info
                .iter()
                .filter(|(_, s)| *s != AVAILABLE)
                .map(|(m, s)| format!("{m}: {s}"))
                .collect();
            Err(reasons.join("; ").into())
        }
    }

    pub(crate) fn destroy(&self, key_id: Uuid) -> Outcome {
        let (keys, partition) = self.load_linked(key_id)?;
        let mut failures = Vec::new();
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(failure) => {
                    failures.push(failure);
                    continue;
                }
            };
            // Both halves share the CKA_ID; every key object under it goes.
            let found = token.find_by_id(&keys[0].cka_id).map_err(Failure::token)?;
            for object in found
                .iter()
                .filter(|d| keys.iter().any(|k| k.object_type == d.object_type))
            {
                if let Err(e) = token.destroy(object.handle) {
                    failures.push(Failure::token(e).on(&member.partition_label));
                }
            }
        }
        if failures.is_empty() {
            Ok(keys
                .into_iter()
                .map(|key| (key.clone(), KeyVersion::of(&key)))
                .collect())
        } else {
            Err(Failure::all(failures))
        }
    }

    /// The key's object on one member, or `None` if the member does not hold it.
    pub(crate) fn find_on(
        &self,
        partition: &Partition,
        member: &Member,
        key: &Key,
    ) -> Result<Option<Found>, Failure> {
        let token = self.tokens.member(partition.connection_id, member)?;
        let found = token.find_by_id(&key.cka_id).map_err(Failure::token)?;
        Ok(found
            .into_iter()
            .find(|d| d.object_type == key.object_type)
            .map(|d| (token, d)))
    }
}

/// Copies what the token says of an object into its record.
pub(crate) fn describe_into(key: &mut Key, object: &ObjectDescription) {
    // On the token a CKA_WRAP_WITH_TRUSTED key is extractable so the cloning
    // domain can copy it; the record keeps CKA_EXTRACTABLE as the user set it.
    let extractable = key.attributes.contains(luna_domain::Attribute::Extractable);
    key.algorithm = object.algorithm.or(key.algorithm);
    key.object_type = object.object_type.or(key.object_type);
    key.size = object.size_bits;
    key.label = object.label.clone();
    key.attributes = object.attributes;
    if object.wrap_with_trusted {
        key.attributes
            .set(luna_domain::Attribute::Extractable, extractable);
    }
    key.object_uid = object.object_uid();
    key.sha_256_fingerprint = object.fingerprint_hex();
    key.modulus = object.modulus_hex();
    key.exponent = object.public_exponent;
}

/// A member's state in `replication_info` after a clone to it. The module
/// re-initialised under the clone (another token appeared, say) says
/// nothing of the member: the operation starts again, and its retry finds
/// what this attempt made.
fn cloned_state(member: &Member, cloned: Result<(), TransferRefused>) -> Result<String, Failure> {
    match cloned {
        Ok(()) => Ok(AVAILABLE.to_owned()),
        Err(TransferRefused::Token(error)) if error.is_interrupted() => {
            Err(Failure::token(error).on(&member.serial_number))
        }
        Err(refused) => Ok(refused.to_string()),
    }
}

/// A member's state in `replication_info` when it holds the key.
pub(crate) const AVAILABLE: &str = "available";
