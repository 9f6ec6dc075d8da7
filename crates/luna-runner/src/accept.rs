//! A create's accept, with no HTTP: its records and queued operation
//! written in one transaction with the request's idempotency and audit
//! records, claimed by this instance when it had room, then run at once.

use luna_domain::idempotency::IdempotentRequest;
use luna_domain::{Key, NewKey, NewKeySpec, Requester};
use luna_store::AuditEntry;
use uuid::Uuid;

use crate::room::Admission;
use crate::runner::{Accepted, Runner};
use crate::RunnerError;

impl Runner {
    /// Accepts a create that `admit` let in. Blocking: call it off the
    /// async workers. The partition `spec` names is read (with its members
    /// and remap policy, one query), the records and their `CreateKey`
    /// operation are made (ids `Uuid::now_v7`), claimed by this instance if
    /// the admission holds room, and written in one transaction with
    /// `idempotency` and `audit`. Once committed, the operation runs here at
    /// once with the records in hand (nothing read back), or waits for a
    /// claim. Gives the records, as the 201 shows them.
    pub fn accept_create(
        &self,
        admission: Admission,
        spec: &NewKeySpec,
        requester: Requester,
        idempotency: Option<&IdempotentRequest>,
        audit: &AuditEntry,
    ) -> Result<Vec<Key>, RunnerError> {
        let Admission { admitted, reserved } = admission;
        let partition = self.store.get_partition(spec.partition_id)?.ok_or_else(|| {
            RunnerError::NotFound(format!("partition {} does not exist", spec.partition_id))
        })?;
        let NewKey { keys, operation } = spec.new_key(&partition, Uuid::now_v7, luna_store::now());
        let mut operation = operation.requested_by(requester);
        if let Some(reserved) = &reserved {
            reserved.claim(&mut operation)?;
        }
        self.store
            .insert_keys_idempotently(&keys, &operation, idempotency, audit)?;
        admitted.kept();
        match reserved {
            Some(reserved) => reserved.hand(
                operation,
                Accepted {
                    keys: keys.clone(),
                    partition,
                },
            ),
            None => self.work.notify_one(),
        }
        Ok(keys)
    }
}
