//! The partitions' member tokens, opened once with their connection's PIN.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use luna_domain::Member;
use luna_pkcs11::{Module, Token, TokenError, TokenInfo};
use luna_store::Store;
use uuid::Uuid;

/// Why a member's token cannot be used now: a sentence for
/// `replication_info` and `operation_error`, and whether it may pass (the
/// token is away, the device failed) or will not (a wrong PIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    pub transient: bool,
    /// This instance's module does not list the token (another instance's
    /// may: started after the token was made, say).
    pub missing_here: bool,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Unavailable {
    fn lasting(reason: String) -> Unavailable {
        Unavailable {
            reason,
            transient: false,
            missing_here: false,
        }
    }
}

/// Opens member tokens on demand and keeps them open (sessions pooled inside).
pub struct TokenRegistry {
    module: Arc<Module>,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    open: Mutex<HashMap<(Uuid, String), Arc<dyn Token>>>,
    /// What members not opened yet say of themselves, asked without a login.
    described: Mutex<HashMap<(Uuid, String), TokenInfo>>,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRegistry")
            .field("module", &self.module.path())
            .finish_non_exhaustive()
    }
}

impl TokenRegistry {
    /// The metrics every token call is timed into (and the calls in flight).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn new(module: Arc<Module>, store: Store, metrics: Arc<crate::metrics::Metrics>) -> TokenRegistry {
        TokenRegistry {
            module,
            store,
            metrics,
            open: Mutex::new(HashMap::new()),
            described: Mutex::new(HashMap::new()),
        }
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The member's token, opened with the connection's PIN.
    pub fn member(&self, connection: Uuid, member: &Member) -> Result<Arc<dyn Token>, Unavailable> {
        let key = (connection, member.serial_number.clone());
        if let Some(open) = self.open.lock().get(&key) {
            return Ok(Arc::clone(open));
        }
        let pin = self
            .store
            .connection_pin(connection)
            .map_err(|e| Unavailable {
                transient: e.is_unavailable(),
                ..Unavailable::lasting(format!("the connection's PIN could not be read: {e}"))
            })?
            .ok_or_else(|| Unavailable::lasting("the partition's connection no longer exists".to_owned()))?;
        let token = self
            .module
            .open_partition(&member.partition_label, Some(&member.serial_number), pin)
            .map_err(|e| unreachable(member, &e))?;
        // Every call of the service's on a member token is timed and its errors counted.
        let token: Arc<dyn Token> = Arc::new(crate::metrics::Metered {
            inner: Arc::new(token),
            metrics: Arc::clone(&self.metrics),
        });
        // Callers that missed the cache together each opened the token; all
        // use the first one kept, so one instance (and, on SoftHSM2, its one
        // write lock) serves every call on the token. Two instances would let
        // two writes race, and SoftHSM2 fails one with CKR_GENERAL_ERROR.
        let mut open = self.open.lock();
        Ok(Arc::clone(open.entry(key).or_insert(token)))
    }

    /// What the member's token says of itself and which mechanisms it has:
    /// from the open token if the service uses it, else asked once without a
    /// login (a reader's request must never try a PIN, nor hold a login).
    pub fn describe(&self, connection: Uuid, member: &Member) -> Result<TokenInfo, Unavailable> {
        let key = (connection, member.serial_number.clone());
        if let Some(open) = self.open.lock().get(&key) {
            return Ok(open.info().clone());
        }
        let mut described = self.described.lock();
        if let Some(info) = described.get(&key) {
            return Ok(info.clone());
        }
        let info = self
            .module
            .describe_token(&member.partition_label, Some(&member.serial_number))
            .map_err(|e| unreachable(member, &e))?;
        described.insert(key, info.clone());
        Ok(info)
    }

    /// Closes the tokens of a deleted connection.
    pub fn forget_connection(&self, connection: Uuid) {
        self.open.lock().retain(|(c, _), _| *c != connection);
        self.described.lock().retain(|(c, _), _| *c != connection);
    }
}

fn unreachable(member: &Member, error: &TokenError) -> Unavailable {
    Unavailable {
        reason: format!(
            "partition {:?} (serial {}) is not reachable: {error}",
            member.partition_label, member.serial_number
        ),
        transient: error.is_transient(),
        missing_here: matches!(error, TokenError::TokenNotFound { .. }),
    }
}
