//! The partitions' member tokens, opened once with their connection's PIN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use luna_domain::Member;
use luna_pkcs11::{Module, Partition};
use luna_store::Store;
use uuid::Uuid;

/// Why a member's token cannot be used now, as a sentence for `replication_info`
/// and `operation_error`.
pub type Unavailable = String;

/// Opens member tokens on demand and keeps them open (sessions pooled inside).
pub struct TokenRegistry {
    module: Arc<Module>,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    open: Mutex<HashMap<(Uuid, String), Arc<dyn Partition>>>,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRegistry")
            .field("module", &self.module.path())
            .finish_non_exhaustive()
    }
}

impl TokenRegistry {
    pub fn new(module: Arc<Module>, store: Store, metrics: Arc<crate::metrics::Metrics>) -> TokenRegistry {
        TokenRegistry {
            module,
            store,
            metrics,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The member's token, opened with the connection's PIN.
    pub fn member(&self, connection: Uuid, member: &Member) -> Result<Arc<dyn Partition>, Unavailable> {
        let key = (connection, member.serial_number.clone());
        if let Some(open) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Arc::clone(open));
        }
        let pin = self
            .store
            .connection_pin(connection)
            .map_err(|e| format!("the connection's PIN could not be read: {e}"))?
            .ok_or_else(|| "the partition's connection no longer exists".to_owned())?;
        let token = self
            .module
            .open_partition(&member.partition_label, Some(&member.serial_number), pin)
            .map_err(|e| {
                format!(
                    "partition {:?} (serial {}) is not reachable: {e}",
                    member.partition_label, member.serial_number
                )
            })?;
        // Every call of the service's on a member token is timed and its errors counted.
        let token: Arc<dyn Partition> = Arc::new(crate::metrics::Metered {
            inner: Arc::new(token),
            metrics: Arc::clone(&self.metrics),
        });
        // Callers that missed the cache together each opened the token; all
        // use the first one kept, so one instance (and, on SoftHSM2, its one
        // write lock) serves every call on the token. Two instances would let
        // two writes race, and SoftHSM2 fails one with CKR_GENERAL_ERROR.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::clone(open.entry(key).or_insert(token)))
    }

    /// Closes the tokens of a deleted connection.
    pub fn forget_connection(&self, connection: Uuid) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, _), _| *c != connection);
    }
}
