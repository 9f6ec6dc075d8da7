//! The partitions' member tokens, opened once with their connection's PIN,
//! and watched: a token that went away is looked at until it is back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use luna_domain::Member;
use luna_pkcs11::{Module, Observed, Reachability, Token, TokenError, TokenInfo};
use luna_store::Store;
use secrecy::SecretString;
use uuid::Uuid;

use crate::failure::Failure;

/// One token this instance uses, as the health check, the metrics and the
/// partition's page show it.
#[derive(Debug, Clone)]
pub struct WatchedToken {
    pub connection: Uuid,
    pub partition_label: String,
    pub serial_number: String,
    pub reachability: Reachability,
}

/// Opens a member's token with its PIN, in place of the module's own
/// `open_token`: tests and benchmarks stand a token in (a latency-bound
/// one, say). The server uses none.
pub type TokenOpener =
    Arc<dyn Fn(&Module, &Member, SecretString) -> luna_pkcs11::Result<Arc<dyn Token>> + Send + Sync>;

/// How often the watcher looks at a token that answers (a token that does
/// not is looked at every tick).
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// The member's token is away now, as its reachability says: its work waits.
fn away(member: &Member, token: &dyn Token, since: SystemTime) -> Failure {
    let now = token.reachability();
    Failure::Away {
        reason: format!(
            "partition {:?} (serial {}) has been unreachable for {} s: {}",
            member.partition_label,
            member.serial_number,
            since.elapsed().map_or(0, |d| d.as_secs()),
            now.last_error.unwrap_or_default()
        ),
        token: token.info().name(),
        since,
    }
}

/// Opens member tokens on demand and keeps them open (sessions pooled inside).
pub struct OpenTokens {
    module: Arc<Module>,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    open: Mutex<HashMap<(Uuid, String), Arc<dyn Token>>>,
    /// Members whose token could not be opened for a reason that may pass
    /// (not listed now, not answering): the watcher looks for them.
    unopened: Mutex<HashMap<(Uuid, String), Unopened>>,
    /// Tokens the watcher is looking at now (a look that hangs is not started again).
    probing: Mutex<HashSet<(Uuid, String)>>,
    opener: Option<TokenOpener>,
}

impl Unopened {
    /// As an open token's would read: away since the first failed open.
    fn reachability(&self) -> Reachability {
        Reachability {
            away_since: Some(self.since),
            last_error: Some(self.error.clone()),
            outages: 1,
            recoveries: 0,
        }
    }
}

/// A member's token that could not be opened for now.
#[derive(Debug, Clone)]
struct Unopened {
    label: String,
    since: SystemTime,
    error: String,
    /// The module listed it before in this process: it is away (its work
    /// waits), not unknown to this instance (whose work is passed on).
    listed_before: bool,
}

impl std::fmt::Debug for OpenTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTokens")
            .field("module", &self.module.path())
            .finish_non_exhaustive()
    }
}

impl OpenTokens {
    /// The metrics every token call is timed into (and the calls in flight).
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn new(
        module: Arc<Module>,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
        opener: Option<TokenOpener>,
    ) -> OpenTokens {
        OpenTokens {
            opener,
            module,
            store,
            metrics,
            open: Mutex::new(HashMap::new()),
            unopened: Mutex::new(HashMap::new()),
            probing: Mutex::new(HashSet::new()),
        }
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The member's token, opened with the connection's PIN; not while it is
    /// known to be away (its work waits: `Failure::Away`).
    pub fn member(&self, connection: Uuid, member: &Member) -> Result<Arc<dyn Token>, Failure> {
        let key = (connection, member.serial_number.clone());
        let open = self.open.lock().get(&key).cloned();
        if let Some(open) = open {
            return match open.reachability().away_since {
                Some(since) => Err(away(member, open.as_ref(), since)),
                None => Ok(open),
            };
        }
        let pin = self
            .store
            .connection_pin(connection)
            .map_err(Failure::store("the connection's PIN could not be read"))?
            .ok_or_else(|| Failure::Final("the partition's connection no longer exists".to_owned()))?;
        let opened = match &self.opener {
            Some(open) => open(&self.module, member, pin),
            None => self
                .module
                .open_token(&member.partition_label, Some(&member.serial_number), pin)
                .map(|token| Arc::new(token) as Arc<dyn Token>),
        };
        let token = match opened {
            Ok(token) => {
                self.unopened.lock().remove(&key);
                token
            }
            Err(error) => return Err(self.not_opened(key, member, &error)),
        };
        // Every call of the service's on a member token is timed and its errors counted.
        let token: Arc<dyn Token> = Arc::new(Observed::new(token, Arc::clone(&self.metrics) as _));
        // Callers that missed the cache together each opened the token; all
        // use the first one kept, so one instance (and, on SoftHSM2, its one
        // write lock) serves every call on the token. Two instances would let
        // two writes race, and SoftHSM2 fails one with CKR_GENERAL_ERROR.
        let mut open = self.open.lock();
        Ok(Arc::clone(open.entry(key).or_insert(token)))
    }

    /// Why the member's token could not be opened; one that may come back
    /// is remembered for the watcher, and one the module listed before is away.
    fn not_opened(&self, key: (Uuid, String), member: &Member, error: &TokenError) -> Failure {
        let failure = open_failure(member, error);
        if !error.is_transient() {
            // A failure that will not pass (a PIN the token refuses, say) is
            // the connection's state until a test says otherwise; one that may
            // pass (a token away, or not listed by this instance's module
            // while another's lists it) is not.
            let check = luna_domain::ConnectionCheck {
                ok: false,
                at: luna_store::now(),
                error: Some(failure.reason().to_owned()),
            };
            if let Err(error) = self.store.record_connection_check(key.0, &check, None) {
                tracing::warn!(connection = %key.0, %error, "the connection's failed login could not be recorded");
            }
            return failure;
        }
        let listed_before = self
            .module
            .has_listed(&member.partition_label, &member.serial_number);
        let mut unopened = self.unopened.lock();
        let entry = unopened.entry(key).or_insert_with(|| Unopened {
            label: member.partition_label.clone(),
            since: SystemTime::now(),
            error: error.to_string(),
            listed_before,
        });
        entry.error = error.to_string();
        if entry.listed_before {
            return Failure::Away {
                reason: failure.reason().to_owned(),
                token: luna_pkcs11::token_name(&member.partition_label, &member.serial_number),
                since: entry.since,
            };
        }
        failure
    }

    /// What the member's token says of itself and which mechanisms it has,
    /// and whether it answers: from the open token if the service uses it,
    /// else asked now without a login (a reader's request must never try a
    /// PIN, nor hold a login).
    pub fn describe(
        &self,
        connection: Uuid,
        member: &Member,
    ) -> (Result<TokenInfo, Failure>, Option<Reachability>) {
        let key = (connection, member.serial_number.clone());
        let open = self.open.lock().get(&key).cloned();
        if let Some(open) = open {
            return (Ok(open.info().clone()), Some(open.reachability()));
        }
        let described = self
            .module
            .describe_token(&member.partition_label, Some(&member.serial_number))
            .map_err(|e| open_failure(member, &e));
        let away = self
            .unopened
            .lock()
            .get(&key)
            .filter(|unopened| unopened.listed_before)
            .map(Unopened::reachability);
        (described, away)
    }

    /// The open tokens, copied out of the lock (calls on them may block).
    fn open_tokens(&self) -> Vec<((Uuid, String), Arc<dyn Token>)> {
        self.open
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), Arc::clone(t)))
            .collect()
    }

    /// Every open token and whether it answers.
    pub fn watched(&self) -> Vec<WatchedToken> {
        let open = self.open_tokens();
        let mut watched: Vec<WatchedToken> = open
            .into_iter()
            .map(|((connection, serial_number), token)| WatchedToken {
                connection,
                partition_label: token.info().label.clone(),
                serial_number,
                reachability: token.reachability(),
            })
            .collect();
        watched.extend(
            self.unopened
                .lock()
                .iter()
                .filter(|(_, unopened)| unopened.listed_before)
                .map(|((connection, serial_number), unopened)| WatchedToken {
                    connection: *connection,
                    partition_label: unopened.label.clone(),
                    serial_number: serial_number.clone(),
                    reachability: unopened.reachability(),
                }),
        );
        watched.sort_by(|a, b| {
            (&a.partition_label, &a.serial_number).cmp(&(&b.partition_label, &b.serial_number))
        });
        watched
    }

    /// Looks at every open token: each that is away at every `tick`, the
    /// others every `LIVENESS_EVERY` (so an outage shows in the health check
    /// without waiting for a failed operation). A token found back has its
    /// parked operations released (in the store, for every instance) and
    /// wakes the workers. Runs until the runtime stops.
    pub async fn watch(self: Arc<Self>, work: Arc<tokio::sync::Notify>, tick: Duration) {
        let mut last_look: HashMap<(Uuid, String), Instant> = HashMap::new();
        loop {
            tokio::time::sleep(tick).await;
            let open = self.open_tokens();
            last_look.retain(|key, _| open.iter().any(|(k, _)| k == key));
            let unopened: Vec<((Uuid, String), String)> = self
                .unopened
                .lock()
                .iter()
                .map(|(key, unopened)| (key.clone(), unopened.label.clone()))
                .collect();
            for (key, label) in unopened {
                if !self.probing.lock().insert(key.clone()) {
                    continue;
                }
                let (me, work) = (Arc::clone(&self), Arc::clone(&work));
                tokio::task::spawn_blocking(move || {
                    if me.module.look_for(&label, &key.1) {
                        me.unopened.lock().remove(&key);
                        me.release_parked(&luna_pkcs11::token_name(&label, &key.1));
                        // A permit if the dispatcher is not waiting now: it looks next time.
                        work.notify_one();
                    }
                    me.probing.lock().remove(&key);
                });
            }
            for (key, token) in open {
                let away = !token.reachability().is_reachable();
                let due = last_look
                    .get(&key)
                    .is_none_or(|at| at.elapsed() >= LIVENESS_EVERY);
                if !(away || due) || !self.probing.lock().insert(key.clone()) {
                    continue;
                }
                last_look.insert(key.clone(), Instant::now());
                let (me, work) = (Arc::clone(&self), Arc::clone(&work));
                // Not awaited: a look that hangs (a network HSM that does not
                // answer) holds up no other token's.
                tokio::task::spawn_blocking(move || {
                    let before = token.reachability();
                    let now = token.probe();
                    if now.recoveries > before.recoveries {
                        me.release_parked(&token.info().name());
                        // A permit if the dispatcher is not waiting now: it looks next time.
                        work.notify_one();
                    }
                    me.probing.lock().remove(&key);
                });
            }
        }
    }

    /// Makes the operations parked on the token named `token` claimable now.
    fn release_parked(&self, token: &str) {
        match self.store.release_parked(token, luna_store::now()) {
            Ok(released) if released > 0 => {
                tracing::info!(token, released, "operations waiting for the token resume");
            }
            Ok(_) => {}
            // The workers find them when their parking ends.
            Err(error) => tracing::warn!(%error, "releasing the operations parked on a token failed"),
        }
    }

    /// Closes the tokens of a deleted connection.
    pub fn forget_connection(&self, connection: Uuid) {
        self.open.lock().retain(|(c, _), _| *c != connection);
        self.unopened.lock().retain(|(c, _), _| *c != connection);
    }
}

/// Why the member's token could not be opened or described, naming it: a
/// token this instance's module does not list is not here (another
/// instance's module may list it: `Failure::NotHere`); any other error reads
/// as the work's would (`Failure::of`).
fn open_failure(member: &Member, error: &TokenError) -> Failure {
    let reason = format!(
        "partition {:?} (serial {}) is not reachable: {error}",
        member.partition_label, member.serial_number
    );
    if matches!(error, TokenError::TokenNotFound { .. }) {
        Failure::NotHere(reason)
    } else {
        Failure::of(error, reason)
    }
}
