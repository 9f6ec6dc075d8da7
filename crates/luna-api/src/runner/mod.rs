//! The durable operation runner.
//!
//! Workers claim operations from the store, run the token calls on the
//! blocking pool (never on an async worker thread), and write the outcome and
//! the key records in one transaction, only while they hold the lease. A
//! worker sleeps until a request queues work (`AppState::work`) or a slow poll
//! finds work another instance queued or a dead worker left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use luna_domain::{Key, KeyEvent, Member, Operation, OperationPayload, Partition};
use luna_pkcs11::{GenerateRequest, ObjectDescription};
use luna_store::Store;
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::tokens::{TokenRegistry, Unavailable};

mod jobs;

/// What an operation's work left: the key records to write, or why it failed.
type Outcome = Result<Vec<Key>, Failure>;

/// Why an operation's attempt did not succeed. A transient failure (the
/// device failed, the token is away) is tried again later, within a bounded
/// budget (`Operation::retry_delay`); a final one ends the operation.
#[derive(Debug)]
enum Failure {
    Final(String),
    Transient(String),
    /// This instance's module does not list a token the work needs; another
    /// instance's may (`RunnerSettings::pass_on_for`).
    NotHere(String),
}

/// What became of a claimed operation.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its outcome (or its retry) was written.
    Recorded,
    /// Handed back, uncounted, for an instance that sees its token.
    PassedOn,
    /// Another worker had taken it over: nothing was written.
    LeaseLost,
}

impl Done {
    /// `done` if the write happened while the lease was held, else `LeaseLost`.
    fn held(written: bool, done: Done) -> Done {
        if written {
            done
        } else {
            Done::LeaseLost
        }
    }
}

/// When a passed-on operation may be taken again (by another instance, most likely).
const PASS_ON_DELAY: Duration = Duration::seconds(1);

/// `poll` times a random factor from `range`. Workers that poll in step stay
/// in step: `just chaos` saw a blind instance take an operation back at the
/// moment its pass-on delay ran out, cycle after cycle, always just before
/// the instance that sees the token looked, until the operation ran out of
/// time. Random waits break the lock step.
fn jittered(poll: StdDuration, range: std::ops::Range<f64>) -> StdDuration {
    use rand::Rng as _;
    poll.mul_f64(rand::thread_rng().gen_range(range))
}

impl Failure {
    /// A database error: transient when the database cannot be reached now
    /// (or the pool was busy), else final; `what` says what was being read.
    fn store(what: &'static str) -> impl Fn(luna_store::StoreError) -> Failure + Copy {
        move |error| {
            let reason = format!("{what}: {error}");
            if error.is_unavailable() {
                Failure::Transient(reason)
            } else {
                Failure::Final(reason)
            }
        }
    }

    fn token(error: luna_pkcs11::TokenError) -> Failure {
        if error.is_transient() {
            Failure::Transient(error.to_string())
        } else {
            Failure::Final(error.to_string())
        }
    }

    /// The same failure, naming the member it happened on.
    fn on(self, member: &str) -> Failure {
        match self {
            Failure::Final(reason) => Failure::Final(format!("{member}: {reason}")),
            Failure::Transient(reason) => Failure::Transient(format!("{member}: {reason}")),
            Failure::NotHere(reason) => Failure::NotHere(format!("{member}: {reason}")),
        }
    }

    fn reason(&self) -> &str {
        match self {
            Failure::Final(reason) | Failure::Transient(reason) | Failure::NotHere(reason) => reason,
        }
    }

    /// Several failures as one: transient only if every one may pass.
    fn all(failures: Vec<Failure>) -> Failure {
        let transient = failures
            .iter()
            .all(|f| matches!(f, Failure::Transient(_) | Failure::NotHere(_)));
        let reason = failures
            .iter()
            .map(Failure::reason)
            .collect::<Vec<_>>()
            .join("; ");
        if transient {
            Failure::Transient(reason)
        } else {
            Failure::Final(reason)
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Final(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::Final(reason.to_owned())
    }
}

impl From<Unavailable> for Failure {
    fn from(unavailable: Unavailable) -> Failure {
        if unavailable.missing_here {
            Failure::NotHere(unavailable.reason)
        } else if unavailable.transient {
            Failure::Transient(unavailable.reason)
        } else {
            Failure::Final(unavailable.reason)
        }
    }
}

/// A member token and the key's object on it.
type Found = (Arc<dyn luna_pkcs11::Partition>, ObjectDescription);

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Zero runs no operations (tests use it to hold operations in progress).
    pub workers: usize,
    /// A worker holds an operation this long without renewing; after a crash,
    /// another worker takes it over once the lease has run out.
    pub lease: Duration,
    /// How often an idle worker looks for work it was not woken for.
    pub poll: StdDuration,
    /// The wait before the first retry of an attempt that failed in a way
    /// that may pass; it doubles for each retry (`Operation::retry_delay`).
    pub retry_base: Duration,
    /// How long after an operation was queued an instance whose module does
    /// not list its token passes it on without counting the attempt; after
    /// that such attempts count, so an operation no instance can run ends.
    pub pass_on_for: Duration,
    /// How old a key's last change must be when a refresh scan begins for
    /// the scan to conclude the key gone (`BeforeScan`).
    pub refresh_settle: Duration,
    /// How long an operation's token work may run before the instance calls
    /// it stuck: its lease is no longer renewed (so another instance, or this
    /// one restarted, takes the operation over) and the health check answers
    /// 503 until the call returns. A PKCS#11 call cannot be cancelled, and a
    /// module that hangs (a network HSM unreachable, a library deadlocked)
    /// is only cured by a restart, which the health check asks for.
    pub stuck_after: StdDuration,
    /// Called by a job between its scan of a partition and its reading of the
    /// records: tests land a write in that window on purpose. `None` in the
    /// server.
    pub after_scan: Option<AfterScan>,
}

/// See `RunnerSettings::after_scan`.
#[derive(Clone)]
pub struct AfterScan(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for AfterScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterScan")
    }
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            workers: 2,
            lease: Duration::seconds(30),
            poll: StdDuration::from_secs(2),
            retry_base: Duration::seconds(2),
            refresh_settle: Duration::seconds(60),
            pass_on_for: Duration::minutes(5),
            stuck_after: StdDuration::from_secs(120),
            after_scan: None,
        }
    }
}

#[derive(Debug)]
pub struct Runner {
    store: Store,
    tokens: Arc<TokenRegistry>,
    work: Arc<Notify>,
    settings: RunnerSettings,
    /// This instance's name in leases.
    owner: String,
    stopping: AtomicBool,
    stop: Notify,
    stuck: Arc<StuckOperations>,
}

/// Operations whose token work has run past `RunnerSettings::stuck_after`,
/// shared with the health check.
#[derive(Debug, Default)]
pub struct StuckOperations(Mutex<HashMap<Uuid, (&'static str, Instant)>>);

impl StuckOperations {
    /// The longest-running stuck operation: its id, kind and time so far.
    pub fn longest(&self) -> Option<(Uuid, &'static str, StdDuration)> {
        let stuck = self.0.lock();
        stuck
            .iter()
            .map(|(id, (kind, since))| (*id, *kind, since.elapsed()))
            .max_by_key(|(_, _, elapsed)| *elapsed)
    }

    fn insert(&self, id: Uuid, kind: &'static str, since: Instant) {
        let mut stuck = self.0.lock();
        stuck.insert(id, (kind, since));
    }

    /// True if the operation had been called stuck.
    fn remove(&self, id: Uuid) -> bool {
        let mut stuck = self.0.lock();
        stuck.remove(&id).is_some()
    }
}

impl Runner {
    pub fn new(
        store: Store,
        tokens: Arc<TokenRegistry>,
        work: Arc<Notify>,
        settings: RunnerSettings,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            store,
            tokens,
            work,
            settings,
            owner: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            stuck: Arc::default(),
        })
    }

    /// What the health check reads.
    pub fn stuck_operations(&self) -> Arc<StuckOperations> {
        Arc::clone(&self.stuck)
    }

    /// Starts the workers on the current runtime.
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.settings.workers)
            .map(|_| tokio::spawn(Arc::clone(self).work_loop()))
            .collect()
    }

    /// Stops claiming; each worker finishes the operation it holds, then ends.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    async fn work_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            let me = Arc::clone(&self);
            let claimed = tokio::task::spawn_blocking(move || {
                me.store
                    .claim_next_operation(&me.owner, luna_store::now(), me.settings.lease)
            })
            .await;
            match claimed {
                Ok(Ok(Some(op))) => Arc::clone(&self).run(op).await,
                Ok(Ok(None)) => {
                    tokio::select! {
                        _ = self.work.notified() => {}
                        _ = self.stop.notified() => {}
                        _ = tokio::time::sleep(jittered(self.settings.poll, 0.5..1.5)) => self.settle_exhausted().await,
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "claiming an operation failed");
                    tokio::time::sleep(self.settings.poll).await;
                }
                Err(error) => tracing::error!(%error, "the claiming task failed"),
            }
        }
    }

    async fn run(self: Arc<Self>, op: Operation) {
        let id = op.id;
        let started = Instant::now();
        let renewer = op
            .lease_expires_at
            .map(|held| tokio::spawn(Arc::clone(&self).renew(id, op.payload.kind_name(), held, started)));
        let me = Arc::clone(&self);
        let finished = tokio::task::spawn_blocking(move || me.execute(op)).await;
        if let Some(renewer) = renewer {
            renewer.abort();
        }
        if self.stuck.remove(id) {
            tracing::warn!(operation = %id, after_secs = started.elapsed().as_secs(), "the token answered the stuck operation");
        }
        match finished {
            Ok(Ok(Done::Recorded)) => {}
            // Give the instances that see the token a chance to take it: a
            // worker that claimed again at once would take every operation
            // back as its delay ran out, and they would never run. Longer
            // than an idle worker's poll, and never the same twice (see
            // `jittered`).
            Ok(Ok(Done::PassedOn)) => tokio::time::sleep(jittered(self.settings.poll, 1.5..2.5)).await,
            Ok(Ok(Done::LeaseLost)) => {
                tracing::warn!(operation = %id, "the lease was lost; another worker owns the operation")
            }
            Ok(Err(error)) => {
                tracing::error!(operation = %id, %error, "recording an operation's outcome failed")
            }
            Err(error) => tracing::error!(operation = %id, %error, "an operation's task failed"),
        }
    }

    /// Keeps the lease, which ends at `held`, while the token works (an
    /// RSA-4096 pair takes seconds), up to `stuck_after` from `started`.
    async fn renew(
        self: Arc<Self>,
        id: Uuid,
        kind: &'static str,
        mut held: chrono::DateTime<chrono::Utc>,
        started: Instant,
    ) {
        let every = (self.settings.lease / 3)
            .to_std()
            .unwrap_or(StdDuration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            if started.elapsed() >= self.settings.stuck_after {
                tracing::error!(
                    operation = %id,
                    kind,
                    after_secs = started.elapsed().as_secs(),
                    "the token has not answered; the lease is left to run out so the operation can be \
                     taken over, and the health check asks for a restart"
                );
                self.stuck.insert(id, kind, started);
                return;
            }
            let until = luna_store::now() + self.settings.lease;
            let me = Arc::clone(&self);
            let renewed =
                tokio::task::spawn_blocking(move || me.store.renew_lease(id, &me.owner, held, until)).await;
            if !matches!(renewed, Ok(Ok(true))) {
                tracing::warn!(operation = %id, "the lease could not be renewed");
                return;
            }
            held = until;
        }
    }

    /// Ends operations that were interrupted too often, and their keys.
    async fn settle_exhausted(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let settled = tokio::task::spawn_blocking(move || -> luna_store::Result<()> {
            let now = luna_store::now();
            for op in me.store.exhausted_operations(now)? {
                let given_up = op.given_up(now)?;
                let reason = given_up.last_error.clone().unwrap_or_default();
                let keys = me.end_failed(&given_up.payload, &reason, now)?;
                let owner = op.lease_owner.as_deref().unwrap_or_default();
                if me.store.give_up_operation(&given_up, owner, now, &keys)? {
                    tracing::warn!(operation = %op.id, %reason, "operation given up");
                }
            }
            Ok(())
        })
        .await;
        if !matches!(settled, Ok(Ok(()))) {
            tracing::error!("settling exhausted operations failed");
        }
    }

    /// Runs one operation on the blocking pool and records its outcome.
    fn execute(&self, op: Operation) -> luna_store::Result<Done> {
        let span = tracing::info_span!("operation", id = %op.id, kind = op.payload.kind_name(), attempt = op.attempts);
        let _entered = span.enter();
        let outcome = match &op.payload {
            OperationPayload::CreateKey {
                key_id,
                public_key_id,
            } => self.create(&op, *key_id, *public_key_id),
            OperationPayload::UpdateKey { key_id, changes } => self.update(*key_id, changes),
            OperationPayload::ReplicateKey { key_id } => self.replicate(*key_id),
            OperationPayload::DeleteKey { key_id } => self.delete(*key_id),
            OperationPayload::RunJob { job_id } => self.run_job(*job_id).map(|()| Vec::new()),
        };
        let now = luna_store::now();
        let outcome = match outcome {
            Err(Failure::NotHere(reason)) if now - op.created_at < self.settings.pass_on_for => {
                tracing::info!(%reason, "this instance does not see the token; passing the operation on");
                let mut passed = op;
                passed.pass_on(reason, now + PASS_ON_DELAY, now)?;
                return Ok(Done::held(
                    self.store.retry_operation_later(&passed, &self.owner)?,
                    Done::PassedOn,
                ));
            }
            Err(Failure::NotHere(reason)) => Err(Failure::Transient(reason)),
            other => other,
        };
        let outcome = match outcome {
            Err(Failure::Transient(reason)) => {
                match Operation::retry_delay(op.attempts, self.settings.retry_base) {
                    Some(delay) => {
                        tracing::warn!(%reason, retry_in_ms = delay.num_milliseconds(), "operation failed; trying again later");
                        let mut later = op;
                        later.retry_later(reason, now + delay, now)?;
                        return Ok(Done::held(
                            self.store.retry_operation_later(&later, &self.owner)?,
                            Done::Recorded,
                        ));
                    }
                    None => Err(Failure::Final(format!(
                        "{reason} (attempt {} of {}; the earlier ones failed too)",
                        op.attempts,
                        luna_domain::operation::MAX_ATTEMPTS
                    ))),
                }
            }
            other => other,
        };
        let (result, keys) = match outcome {
            Ok(mut keys) => {
                for key in &mut keys {
                    key.apply(&KeyEvent::Succeeded, now)?;
                }
                (Ok(()), keys)
            }
            Err(failure) => {
                let reason = failure.reason().to_owned();
                tracing::warn!(%reason, "operation failed");
                let keys = self.end_failed(&op.payload, &reason, now)?;
                (Err(reason), keys)
            }
        };
        let mut finished = op;
        finished.finish(result, now)?;
        let recorded = self.store.finish_operation(&finished, &self.owner, &keys)?;
        if recorded {
            // Every operation's outcome enters the audit trail.
            let entry = luna_store::AuditEntry {
                at: now,
                username: "luna-server".into(),
                action: format!("operation {}", finished.payload.kind_name()),
                target: finished.payload.target().to_string(),
                outcome: match &finished.last_error {
                    Some(reason) if finished.state == luna_domain::OperationState::Failed => {
                        format!("failed: {reason}")
                    }
                    _ => "succeeded".into(),
                },
                request_id: finished.id.to_string(),
                client: self.owner.clone(),
            };
            if let Err(error) = self.store.append_audit(&entry) {
                tracing::error!(%error, "an operation's audit record could not be written");
            }
        }
        Ok(Done::held(recorded, Done::Recorded))
    }

    /// Ends what a failed operation began: fails its job, and returns its
    /// keys (with a pair's linked half when the operation took it too) in
    /// their failed state, for the caller to write.
    fn end_failed(
        &self,
        payload: &OperationPayload,
        reason: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> luna_store::Result<Vec<Key>> {
        if let OperationPayload::RunJob { job_id } = payload {
            self.fail_job(*job_id, reason)?;
        }
        let mut keys = Vec::new();
        for key_id in payload.key_ids() {
            let Some(key) = self.store.get_key(key_id)? else {
                continue;
            };
            let link = key.link_id.filter(|_| payload.includes_link());
            keys.push(key);
            if let Some(half) = link.map(|id| self.store.get_key(id)).transpose()?.flatten() {
                keys.push(half);
            }
        }
        // A key no longer busy (forgotten and re-found, say) is left as it is.
        keys.retain_mut(|key| key.apply(&KeyEvent::Failed(reason.to_owned()), now).is_ok());
        Ok(keys)
    }

    /// The key records an operation acts on, and their partition.
    fn load(&self, ids: &[Uuid]) -> Result<(Vec<Key>, Partition), Failure> {
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let key = self
                .store
                .get_key(*id)
                .map_err(Failure::store("the key record could not be read"))?
                .ok_or_else(|| format!("key {id} no longer exists here"))?;
            keys.push(key);
        }
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

    fn create(&self, op: &Operation, key_id: Uuid, public_key_id: Option<Uuid>) -> Outcome {
        let ids: Vec<Uuid> = std::iter::once(key_id).chain(public_key_id).collect();
        let (mut keys, partition) = self.load(&ids)?;
        let remap = crate::registry::remaps_rsa_mechanisms(&self.store, partition.connection_id)
            .map_err(Failure::store("the connection record could not be read"))?;
        let first = partition.members.first().ok_or("the partition has no members")?;
        let token = self.tokens.member(partition.connection_id, first)?;
        let spec = &keys[0];
        let mechanism = spec.mechanism.ok_or("the key record names no mechanism")?;
        let in_domain = match partition.members.get(1) {
            Some(peer) => token
                .shares_domain_with(&peer.serial_number)
                .map_err(Failure::token)?,
            None => false,
        };
        // The records hold what was requested until the token says what it made.
        let mut attributes: luna_domain::AttributeSet =
            keys.iter().flat_map(|k| k.attributes.iter()).collect();
        if in_domain {
            // Within a cloning domain only the domain may wrap the key, so it is
            // made extractable on the token (to clone) whatever the user chose;
            // the record reports CKA_EXTRACTABLE as the user set it.
            attributes.insert(luna_domain::Attribute::Extractable);
        }
        let request = GenerateRequest {
            cka_id: spec.cka_id.clone(),
            label: spec.label.clone(),
            mechanism,
            size: spec.size,
            attributes,
            remap,
            retry: op.attempts > 1,
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
            key.generated_with = Some(generated.mechanism_used);
        }
        let info = self.spread(
            &partition,
            first,
            token.as_ref(),
            &generated.objects,
            op.attempts > 1,
        );
        for key in &mut keys {
            key.replicated = info.values().all(|s| s == AVAILABLE);
            key.replication_info = info.clone();
        }
        Ok(keys)
    }

    /// Clones `objects` from `source` (on member `from`) to every other
    /// member; returns each member's state. A retry first looks for copies an
    /// earlier attempt made.
    fn spread(
        &self,
        partition: &Partition,
        from: &Member,
        source: &dyn luna_pkcs11::Partition,
        objects: &[ObjectDescription],
        retry: bool,
    ) -> std::collections::BTreeMap<String, String> {
        let mut info = std::collections::BTreeMap::new();
        for member in &partition.members {
            let state = if member.serial_number == from.serial_number {
                AVAILABLE.to_owned()
            } else {
                match self.clone_to(partition, member, source, &from.serial_number, objects, retry) {
                    Ok(()) => AVAILABLE.to_owned(),
                    Err(reason) => reason,
                }
            };
            info.insert(member.serial_number.clone(), state);
        }
        info
    }

    fn clone_to(
        &self,
        partition: &Partition,
        member: &Member,
        source: &dyn luna_pkcs11::Partition,
        source_serial: &str,
        objects: &[ObjectDescription],
        retry: bool,
    ) -> Result<(), String> {
        let target = self
            .tokens
            .member(partition.connection_id, member)
            .map_err(|u| u.reason)?;
        let present: Vec<ObjectDescription> = match objects.first() {
            Some(first) if retry => target.find_by_id(&first.cka_id).map_err(|e| e.to_string())?,
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

    fn update(&self, key_id: Uuid, changes: &[(luna_domain::Attribute, bool)]) -> Outcome {
        let (mut keys, partition) = self.load(&[key_id])?;
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
        Ok(keys)
    }

    fn replicate(&self, key_id: Uuid) -> Outcome {
        let (mut keys, partition) = self.load(&linked(&self.store, key_id)?)?;
        // Find a member that holds every half, and what each member holds.
        let mut holder: Option<(&Member, Arc<dyn luna_pkcs11::Partition>, Vec<ObjectDescription>)> = None;
        let mut lacking = Vec::new();
        let mut info = std::collections::BTreeMap::new();
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(unavailable) => {
                    info.insert(member.serial_number.clone(), unavailable.reason);
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
            let state = match self.clone_to(
                &partition,
                member,
                source.as_ref(),
                &from.serial_number,
                &objects,
                true,
            ) {
                Ok(()) => AVAILABLE.to_owned(),
                Err(reason) => reason,
            };
            info.insert(member.serial_number.clone(), state);
        }
        let everywhere = info.values().all(|s| s == AVAILABLE);
        for key in &mut keys {
            key.replication_info = info.clone();
            key.replicated = everywhere;
        }
        if everywhere {
            Ok(keys)
        } else {
            let reasons: Vec<String> = info
                .iter()
                .filter(|(_, s)| *s != AVAILABLE)
                .map(|(m, s)| format!("{m}: {s}"))
                .collect();
            Err(reasons.join("; ").into())
        }
    }

    fn delete(&self, key_id: Uuid) -> Outcome {
        let (keys, partition) = self.load(&linked(&self.store, key_id)?)?;
        let mut failures = Vec::new();
        for member in &partition.members {
            let token = match self.tokens.member(partition.connection_id, member) {
                Ok(token) => token,
                Err(unavailable) => {
                    failures.push(unavailable.into());
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
            Ok(keys)
        } else {
            Err(Failure::all(failures))
        }
    }

    /// The key's object on one member, or `None` if the member does not hold it.
    fn find_on(&self, partition: &Partition, member: &Member, key: &Key) -> Result<Option<Found>, Failure> {
        let token = self.tokens.member(partition.connection_id, member)?;
        let found = token.find_by_id(&key.cka_id).map_err(Failure::token)?;
        Ok(found
            .into_iter()
            .find(|d| d.object_type == key.object_type)
            .map(|d| (token, d)))
    }
}

/// Moves one key object from `source` to `target`, never in clear: within a
/// cloning domain under the pair's trusted key; without one, an extractable
/// key under a key the two members agree for this transfer; a public key as
/// its public attributes. Says why when none applies.
pub(super) fn transfer(
    source: &dyn luna_pkcs11::Partition,
    source_serial: &str,
    target: &dyn luna_pkcs11::Partition,
    target_serial: &str,
    object: &ObjectDescription,
) -> Result<(), String> {
    if object.object_type != Some(luna_domain::ObjectType::PublicKey) {
        // Registration refuses such members; a module changed since is named here.
        if let Some(reason) = [source, target].iter().find_map(|t| t.info().cannot_replicate()) {
            return Err(reason);
        }
    }
    let in_domain = source
        .shares_domain_with(target_serial)
        .map_err(|e| e.to_string())?;
    let copied = if in_domain || object.object_type == Some(luna_domain::ObjectType::PublicKey) {
        source
            .export_to(object, target_serial)
            .and_then(|portable| target.import_from(&portable, source_serial))
    } else if object.attributes.contains(luna_domain::Attribute::Extractable) && !object.wrap_with_trusted {
        target.offer_transport().and_then(|offer| {
            let portable = source.export_for_offer(object, &offer)?;
            target.import_offered(&portable, &offer)
        })
    } else {
        return Err(
            "the key is not extractable, and the members share no cloning domain to clone it within \
             (register the connection with so_password)"
                .into(),
        );
    };
    copied.map(drop).map_err(|e| e.to_string())
}

/// A key's id and its linked half's, for operations that act on both.
fn linked(store: &Store, key_id: Uuid) -> Result<Vec<Uuid>, Failure> {
    let key = store
        .get_key(key_id)
        .map_err(Failure::store("the key record could not be read"))?
        .ok_or_else(|| format!("key {key_id} no longer exists here"))?;
    Ok(std::iter::once(key.id).chain(key.link_id).collect())
}

/// Copies what the token says of an object into its record.
fn describe_into(key: &mut Key, object: &ObjectDescription) {
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

/// A member's state in `replication_info` when it holds the key.
const AVAILABLE: &str = "available";
