//! The durable operation runner.
//!
//! A dispatcher claims operations from the store, several in one
//! transaction, as long as the instance has room (`RunnerSettings::workers`
//! in flight at most, and `token_concurrency` of one partition at its token
//! calls, as many again waiting for a turn: one slow token never holds the
//! room of another); each runs as a task of its own, its token calls on the
//! blocking pool (never on an async worker thread), and writes its outcome,
//! its key records and its audit record in one transaction, only while it
//! holds the lease (outcomes that end together share a commit: luna-store's
//! group commit). The dispatcher sleeps until a request queues work
//! (`AppState::work`), an operation ends (and the queue may hold work a
//! partition has room for: `worth_looking`), or a slow poll finds work
//! another instance queued or a dead worker left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use luna_domain::{Key, KeyEvent, KeyVersion, Operation, OperationPayload};
use luna_store::Store;
use parking_lot::Mutex;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::tokens::OpenTokens;

mod backlog;
mod failure;
mod jobs;
mod keys;
mod transfer;

pub use backlog::{Admitted, Backlog, QueueFull, QueueState};
use failure::Failure;

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

/// The most operations one claim takes (one transaction).
const CLAIM_AT_MOST: usize = 16;

/// An instance takes (accepts or claims) up to this many times
/// `token_concurrency` of one partition's operations: the ones past
/// `token_concurrency` wait here for a turn at the tokens, so that the next
/// turn is taken without a claim's transaction (see `partition_room`).
const WAITING_TURNS: usize = 2;

/// `poll` times a random factor from `range`. Workers that poll in step stay
/// in step: `just chaos` saw a blind instance take an operation back at the
/// moment its pass-on delay ran out, cycle after cycle, always just before
/// the instance that sees the token looked, until the operation ran out of
/// time. Random waits break the lock step.
fn jittered(poll: StdDuration, range: std::ops::Range<f64>) -> StdDuration {
    use rand::Rng as _;
    poll.mul_f64(rand::thread_rng().gen_range(range))
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Operations in flight at once in this instance, across its tokens.
    /// Zero runs none (tests use it to hold operations in progress).
    pub workers: usize,
    /// Operations of one partition in flight at once: how many calls its
    /// tokens get together (a network HSM runs many; on SoftHSM2 and
    /// openCryptoki luna-pkcs11 still lets one write at a time through).
    pub token_concurrency: usize,
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
    /// How long a token may be away before the work waiting for it fails,
    /// saying so. Until then its operations are parked: not attempted, not
    /// counted, and resumed as soon as the token is seen back.
    pub token_outage: StdDuration,
    /// Called by a job between its scan of a partition and its reading of the
    /// records: tests land a write in that window on purpose. `None` in the
    /// server.
    pub after_scan: Option<Hook>,
    /// Called by an operation between its token work and the write of its
    /// outcome: tests copy the database there, as a power cut would leave
    /// it. `None` in the server.
    pub before_outcome: Option<Hook>,
    /// The most key operations one partition may have waiting before its
    /// creates are refused (429): past it, keys would wait ever longer.
    pub queue_per_partition: usize,
    /// The most key operations waiting across every partition.
    pub queue_total: usize,
}

/// The longest an operation stays parked before a worker looks at its token
/// again: the instance that sees the token back ends the parking at once,
/// and this bounds the wait when no instance that parked it is left to.
const PARKED_AT_MOST: StdDuration = StdDuration::from_secs(30);

/// A test's hook into the runner (`RunnerSettings::after_scan`, `before_outcome`).
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            workers: 64,
            token_concurrency: 8,
            lease: Duration::seconds(30),
            poll: StdDuration::from_secs(2),
            retry_base: Duration::seconds(2),
            refresh_settle: Duration::seconds(60),
            pass_on_for: Duration::minutes(5),
            stuck_after: StdDuration::from_secs(120),
            token_outage: StdDuration::from_secs(600),
            after_scan: None,
            before_outcome: None,
            queue_per_partition: 10_000,
            queue_total: 100_000,
        }
    }
}

#[derive(Debug)]
pub struct Runner {
    store: Store,
    tokens: Arc<OpenTokens>,
    work: Arc<Notify>,
    settings: RunnerSettings,
    /// This runner's name in leases (unique per process).
    owner: String,
    /// The instance's name, in the audit records of outcomes.
    instance: String,
    stopping: AtomicBool,
    stop: Notify,
    stuck: Arc<StuckOperations>,
    /// Operations at their token work, by partition (`None`: jobs, and
    /// operations stored before their partition was). A partition's room
    /// comes back as its operation's token work ends, before its outcome is
    /// written, so that the next one's claim shares a commit with it.
    in_flight: Mutex<HashMap<Option<Uuid>, usize>>,
    /// Operations running in this instance, from claim to recorded outcome.
    running: std::sync::atomic::AtomicUsize,
    /// Each partition's turns at its tokens (`token_concurrency` of them).
    turns: Mutex<HashMap<Uuid, Arc<tokio::sync::Semaphore>>>,
    /// Told when an operation ends (room for the next).
    ended: Notify,
    /// No claim before then: an operation was passed on (see `jittered`).
    pause_until: Mutex<Option<Instant>>,
    /// Whether the next pass looks at the queue whatever the backlog says:
    /// set when an operation is queued here without being handed over, by
    /// the slow poll (another instance's work, a job, a lease run out), and
    /// after a claim that filled what it could; cleared by a look. Otherwise
    /// a pass looks only when the backlog says a partition with room has
    /// work this instance does not run (`worth_looking`): most creates are
    /// handed to a worker as they are accepted, a look per create cost the
    /// database two reads, and a look that skips a full partition reads its
    /// queue.
    must_look: AtomicBool,
    /// Operations a request claimed for this instance as it accepted them
    /// (`reserve`), with the records it wrote, on their way to the dispatcher.
    handed: tokio::sync::mpsc::UnboundedSender<(Operation, Accepted)>,
    handed_to: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Operation, Accepted)>>>,
    /// The bound on the work waiting for tokens, which creates are admitted under.
    backlog: Arc<Backlog>,
}

/// The records a create's request wrote in the transaction that claimed its
/// operation: the runner starts from them instead of reading them back. No
/// one else changes them meanwhile: a busy key is neither forgotten nor
/// refreshed, its outcome is written only under the claim's lease, and its
/// partition is neither forgotten nor given other members while it has an
/// operation in flight (`Store::forget_partition`, HA member changes).
#[derive(Debug)]
pub struct Accepted {
    pub keys: Vec<Key>,
    pub partition: luna_domain::Partition,
}

/// Room in this instance held for an operation a request is about to
/// queue: the request claims it in its own transaction (no claim
/// transaction, no wait for a poll) and hands it over once committed.
/// Dropped without `hand`, the room is given back.
#[derive(Debug)]
pub struct Reserved {
    runner: Arc<Runner>,
    partition: Option<Uuid>,
    lease: String,
    handed: bool,
}

impl Reserved {
    /// Claims `op` for this instance, as the dispatcher would.
    pub fn claim(&self, op: &mut Operation, now: OffsetDateTime) -> luna_domain::Result<()> {
        op.claim(&self.lease, now, now + self.runner.settings.lease)
    }

    /// Runs `op` (claimed with `claim`, and committed with `accepted`), in
    /// the room held for it.
    pub fn hand(mut self, mut op: Operation, accepted: Accepted) {
        op.partition_id = self.partition;
        self.handed = self.runner.handed.send((op, accepted)).is_ok();
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.handed {
            self.runner.token_work_ended(self.partition);
            self.runner.ended();
        }
    }
}

/// An operation's place in the counts, from its claim to its recorded
/// outcome; its partition's room is given back once, when its token work
/// ends (`token_work_ended`) or, at the latest, with this.
struct Slot {
    runner: Arc<Runner>,
    partition: Option<Uuid>,
    token_work_over: AtomicBool,
    /// The turn at its partition's tokens, from when the operation got it
    /// until its token work ended.
    turn: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Slot {
    fn token_work_ended(&self) {
        if !self.token_work_over.swap(true, Ordering::SeqCst) {
            self.turn.lock().take();
            self.runner.token_work_ended(self.partition);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.token_work_ended();
        self.runner.ended();
    }
}

/// Operations whose token call has run past `RunnerSettings::stuck_after`,
/// by the lease the attempt holds (one operation may be attempted again
/// while an earlier attempt still hangs), shared with the health check.
#[derive(Debug, Default)]
pub struct StuckOperations(Mutex<HashMap<String, StuckCall>>);

/// One hung attempt: its operation, what it does, the call and since when.
#[derive(Debug, Clone)]
struct StuckCall {
    operation: Uuid,
    kind: &'static str,
    function: &'static str,
    since: Instant,
}

impl StuckOperations {
    /// The longest-hung attempt: its operation, kind, token call and time so far.
    pub fn longest(&self) -> Option<(Uuid, &'static str, &'static str, StdDuration)> {
        self.0
            .lock()
            .values()
            .map(|c| (c.operation, c.kind, c.function, c.since.elapsed()))
            .max_by_key(|(_, _, _, elapsed)| *elapsed)
    }

    fn insert(&self, lease: &str, call: StuckCall) {
        self.0.lock().insert(lease.to_owned(), call);
    }

    /// True if the attempt under `lease` had been called stuck.
    fn remove(&self, lease: &str) -> bool {
        self.0.lock().remove(lease).is_some()
    }
}

/// One claimed attempt, as its renewer knows it.
#[derive(Debug)]
struct Attempt {
    operation: Uuid,
    kind: &'static str,
    /// The lease name it claimed under (`Runner::owner` and a claim id).
    lease: String,
    /// Set by the attempt's blocking thread when it starts.
    thread: Arc<std::sync::OnceLock<std::thread::ThreadId>>,
}

impl Runner {
    /// A runner of instance `instance` (named in its outcomes' audit records).
    pub fn new(
        store: Store,
        tokens: Arc<OpenTokens>,
        work: Arc<Notify>,
        settings: RunnerSettings,
        instance: &str,
    ) -> Arc<Runner> {
        let (handed, handed_to) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Backlog::new(settings.queue_per_partition, settings.queue_total);
        Arc::new(Runner {
            store,
            tokens,
            work,
            settings,
            owner: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            instance: instance.to_owned(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            stuck: Arc::default(),
            in_flight: Mutex::new(HashMap::new()),
            running: std::sync::atomic::AtomicUsize::new(0),
            turns: Mutex::default(),
            ended: Notify::new(),
            pause_until: Mutex::new(None),
            must_look: AtomicBool::new(true),
            handed,
            handed_to: Mutex::new(Some(handed_to)),
            backlog,
        })
    }

    /// The bound creates are admitted under, and what the queue holds.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// What the health check reads.
    pub fn stuck_operations(&self) -> Arc<StuckOperations> {
        Arc::clone(&self.stuck)
    }

    /// Starts, on the current runtime, the reading of the queue's depth and
    /// the dispatcher (none with no workers).
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(Arc::clone(self).read_backlog())];
        if self.settings.workers > 0 {
            tasks.push(tokio::spawn(Arc::clone(self).dispatch()));
        }
        tasks
    }

    /// Stops claiming; the operations in flight finish, then the dispatcher ends.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    /// Reads the queue's depth every `backlog::READ_EVERY`, until stopped.
    async fn read_backlog(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.backlog.read(&me.store)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "reading the queue's depth failed"),
                Err(error) => tracing::warn!(%error, "reading the queue's depth failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backlog::READ_EVERY) => {}
                _ = self.stop.notified() => {}
            }
        }
    }

    /// Whether a partition with room here has more key operations waiting
    /// (every instance's, as the backlog last read them, with what this
    /// instance accepted and finished since) than this instance runs of it.
    fn worth_looking(&self, room: &luna_store::PartitionRoom) -> bool {
        self.backlog.states().iter().any(|(partition, queue)| {
            let here = room.in_flight.get(partition).copied().unwrap_or(0);
            here < room.per_partition && queue.depth > i64::try_from(here).unwrap_or(i64::MAX)
        })
    }

    /// How many operations of one partition this instance takes (accepted
    /// or claimed), with `running` in all: `token_concurrency` at the tokens,
    /// and as many again waiting for a turn, as long as the instance keeps
    /// the room of a partition's turns for the others. Claims and creates
    /// share the bound and the turns, so a partition's queued work (a PATCH,
    /// a retry) is not left behind its newer creates.
    fn partition_room(&self, running: usize) -> usize {
        let turns = self.settings.token_concurrency.max(1);
        if running + turns < self.settings.workers {
            WAITING_TURNS * turns
        } else {
            turns
        }
    }

    /// The turns at `partition`'s tokens: `token_concurrency` operations at
    /// their token work at once (none for a job's, which takes its own).
    fn turns_of(&self, partition: Option<Uuid>) -> Option<Arc<tokio::sync::Semaphore>> {
        let partition = partition?;
        let mut turns = self.turns.lock();
        let turns = turns.entry(partition).or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(
                self.settings.token_concurrency.max(1),
            ))
        });
        Some(Arc::clone(turns))
    }

    /// Room for one operation of `partition`, if this instance runs
    /// operations, is not stopping, and has room (`workers`, `token_concurrency`).
    pub fn reserve(self: &Arc<Self>, partition: Uuid) -> Option<Reserved> {
        if self.settings.workers == 0 || self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let mut in_flight = self.in_flight.lock();
        let here = in_flight.entry(Some(partition)).or_default();
        let running = self.running.load(Ordering::SeqCst);
        if running >= self.settings.workers || *here >= self.partition_room(running) {
            return None;
        }
        *here += 1;
        self.running.fetch_add(1, Ordering::SeqCst);
        Some(Reserved {
            runner: Arc::clone(self),
            partition: Some(partition),
            lease: format!("{}:{}", self.owner, Uuid::new_v4().simple()),
            handed: false,
        })
    }

    /// An operation of `partition` is done with its tokens (or its room was not used).
    fn token_work_ended(&self, partition: Option<Uuid>) {
        if let Some(n) = self.in_flight.lock().get_mut(&partition) {
            *n = n.saturating_sub(1);
        }
        self.ended.notify_one();
    }

    /// An operation's outcome is recorded (or its room was not used).
    fn ended(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_one();
    }

    /// Runs `op` (already counted) as a task of its own.
    fn launch(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        op: Operation,
        accepted: Option<Accepted>,
    ) {
        let slot = Slot {
            runner: Arc::clone(self),
            partition: op.partition_id,
            token_work_over: AtomicBool::new(false),
            turn: Mutex::new(None),
        };
        tasks.spawn(Arc::clone(self).run(op, accepted, slot));
    }

    /// Claims what there is room for and runs each claimed operation (and
    /// each one a request handed over) as a task of its own, until stopped;
    /// then waits for them.
    async fn dispatch(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        let Some(mut handed) = self.handed_to.lock().take() else {
            return;
        };
        while !self.stopping.load(Ordering::SeqCst) {
            while tasks.try_join_next().is_some() {}
            while let Ok((op, accepted)) = handed.try_recv() {
                self.launch(&mut tasks, op, Some(accepted));
            }
            let paused = self
                .pause_until
                .lock()
                .and_then(|until| until.checked_duration_since(Instant::now()));
            if let Some(pause) = paused {
                tokio::select! {
                    _ = self.stop.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            let (free, room) = {
                let in_flight = self.in_flight.lock();
                let running = self.running.load(Ordering::SeqCst);
                let room = luna_store::PartitionRoom {
                    in_flight: in_flight.iter().filter_map(|(p, n)| p.map(|p| (p, *n))).collect(),
                    per_partition: self.partition_room(running),
                };
                (self.settings.workers.saturating_sub(running), room)
            };
            let look =
                free > 0 && (self.must_look.swap(false, Ordering::SeqCst) || self.worth_looking(&room));
            let asked = free.min(CLAIM_AT_MOST);
            let claimed = if !look {
                Ok(Ok(Vec::new()))
            } else {
                let me = Arc::clone(&self);
                tokio::task::spawn_blocking(move || {
                    // A lease name per claim, not per instance: when an attempt
                    // hangs and its lease runs out, this same instance may take
                    // the operation again, and the hung attempt must then be
                    // unable to write over it when it returns.
                    let leases: Vec<String> = (0..asked)
                        .map(|_| format!("{}:{}", me.owner, Uuid::new_v4().simple()))
                        .collect();
                    me.store
                        .claim_operations(&leases, luna_store::now(), me.settings.lease, &room)
                })
                .await
            };
            match claimed {
                Ok(Ok(ops)) if !ops.is_empty() => {
                    // A claim that took all it asked for may have left more
                    // behind. One that took fewer left nothing it could take
                    // (its partitions full, or no more work): looking again
                    // at once read the queue for nothing, two looks of three
                    // on a token slower than its clients (an operation's end
                    // looks again when the backlog says it is worth it).
                    if ops.len() == asked {
                        self.must_look.store(true, Ordering::SeqCst);
                    }
                    for op in ops {
                        *self.in_flight.lock().entry(op.partition_id).or_default() += 1;
                        self.running.fetch_add(1, Ordering::SeqCst);
                        self.launch(&mut tasks, op, None);
                    }
                }
                Ok(Ok(_)) => {
                    tokio::select! {
                        Some((op, accepted)) = handed.recv() => self.launch(&mut tasks, op, Some(accepted)),
                        _ = self.work.notified() => self.must_look.store(true, Ordering::SeqCst),
                        _ = self.ended.notified() => {}
                        _ = self.stop.notified() => {}
                        _ = tokio::time::sleep(jittered(self.settings.poll, 0.5..1.5)) => {
                            self.must_look.store(true, Ordering::SeqCst);
                            self.settle_exhausted().await;
                        }
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "claiming operations failed");
                    self.must_look.store(true, Ordering::SeqCst);
                    tokio::time::sleep(self.settings.poll).await;
                }
                Err(error) => {
                    tracing::error!(%error, "the claiming task failed");
                    self.must_look.store(true, Ordering::SeqCst);
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn run(self: Arc<Self>, op: Operation, accepted: Option<Accepted>, slot: Slot) {
        let id = op.id;
        let lease = op.lease_owner().unwrap_or_default().to_owned();
        let started = Instant::now();
        // The thread the attempt's token calls run on, for the watchdog.
        let thread = Arc::new(std::sync::OnceLock::new());
        let mut held = op.lease_expires_at();
        // An operation accepted or claimed here while its partition's tokens
        // were all busy waits here for its turn, its lease not renewed (a
        // token call that hangs must not keep it here for ever: its lease
        // runs out and another instance may take it). Its turn come, it goes
        // on only if its lease is still its own: certainly so while two
        // thirds of it are left (a claim takes queued operations and lapsed
        // leases only; the renewer keeps it from there as it keeps a fresh
        // one's), and past that only once renewed.
        if let Some(turns) = self.turns_of(slot.partition) {
            let turn = match Arc::clone(&turns).try_acquire_owned() {
                Ok(turn) => Some(turn),
                Err(_) => {
                    let turn = turns.acquire_owned().await.ok();
                    let fresh =
                        held.is_some_and(|until| until - luna_store::now() >= self.settings.lease * 2 / 3);
                    if !fresh {
                        match self.keep_lease(id, &lease, held).await {
                            Some(until) => held = Some(until),
                            None => {
                                tracing::warn!(operation = %id, "the lease ran out while the operation waited for its turn; another worker may take it");
                                return;
                            }
                        }
                    }
                    turn
                }
            };
            *slot.turn.lock() = turn;
        }
        let renewer = held.map(|held| {
            let attempt = Attempt {
                operation: id,
                kind: op.payload.kind_name(),
                lease: lease.clone(),
                thread: Arc::clone(&thread),
            };
            tokio::spawn(Arc::clone(&self).renew(attempt, held))
        });
        let me = Arc::clone(&self);
        let finished = tokio::task::spawn_blocking(move || {
            let _ = thread.set(std::thread::current().id());
            me.execute(op, accepted, &|| slot.token_work_ended())
        })
        .await;
        if let Some(renewer) = renewer {
            renewer.abort();
        }
        if self.stuck.remove(&lease) {
            tracing::warn!(operation = %id, after_secs = started.elapsed().as_secs(), "the token answered the stuck operation");
        }
        match finished {
            Ok(Ok(Done::Recorded)) => {}
            // Give the instances that see the token a chance to take it: a
            // runner that claimed again at once would take every operation
            // back as its delay ran out, and they would never run. Longer
            // than an idle runner's poll, and never the same twice (see
            // `jittered`).
            Ok(Ok(Done::PassedOn)) => {
                *self.pause_until.lock() = Some(Instant::now() + jittered(self.settings.poll, 1.5..2.5));
            }
            Ok(Ok(Done::LeaseLost)) => {
                tracing::warn!(operation = %id, "the lease was lost; another worker owns the operation")
            }
            Ok(Err(error)) => {
                tracing::error!(operation = %id, %error, "recording an operation's outcome failed")
            }
            Err(error) => tracing::error!(operation = %id, %error, "an operation's task failed"),
        }
    }

    /// Renews a lease that ends at `held` for a full lease from now, if it is
    /// still `lease`'s: the new end, or `None` if another worker took it (or
    /// the database could not say).
    async fn keep_lease(
        self: &Arc<Self>,
        id: Uuid,
        lease: &str,
        held: Option<OffsetDateTime>,
    ) -> Option<OffsetDateTime> {
        let held = held?;
        let until = luna_store::now() + self.settings.lease;
        let (me, lease) = (Arc::clone(self), lease.to_owned());
        let renewed =
            tokio::task::spawn_blocking(move || me.store.renew_lease(id, &lease, held, until)).await;
        matches!(renewed, Ok(Ok(true))).then_some(until)
    }

    /// Keeps the attempt's lease, which ends at `held`, while the token works
    /// (an RSA-4096 pair takes seconds; a refresh of thousands of objects,
    /// minutes), renewing every third of it. Looks every second at the token
    /// call the attempt is in: one that has run `stuck_after` is called
    /// stuck, and the lease is left to run out.
    async fn renew(self: Arc<Self>, attempt: Attempt, mut held: OffsetDateTime) {
        let every = StdDuration::try_from(self.settings.lease / 3).unwrap_or(StdDuration::from_secs(1));
        let look = every.min(StdDuration::from_secs(1));
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(look).await;
            let in_call = attempt
                .thread
                .get()
                .and_then(|thread| self.tokens.metrics().call_in_flight(*thread));
            if let Some((function, running)) =
                in_call.filter(|(_, running)| *running >= self.settings.stuck_after)
            {
                tracing::error!(
                    operation = %attempt.operation,
                    kind = attempt.kind,
                    function,
                    after_secs = running.as_secs(),
                    "the token has not answered; the lease is left to run out so the operation can be \
                     taken over, and the health check asks for a restart"
                );
                let since = Instant::now().checked_sub(running).unwrap_or_else(Instant::now);
                self.stuck.insert(
                    &attempt.lease,
                    StuckCall {
                        operation: attempt.operation,
                        kind: attempt.kind,
                        function,
                        since,
                    },
                );
                return;
            }
            if renewed_at.elapsed() < every {
                continue;
            }
            let until = luna_store::now() + self.settings.lease;
            let me = Arc::clone(&self);
            let lease = attempt.lease.clone();
            let renewed = tokio::task::spawn_blocking(move || {
                me.store.renew_lease(attempt.operation, &lease, held, until)
            })
            .await;
            match renewed {
                Ok(Ok(true)) => {
                    held = until;
                    renewed_at = Instant::now();
                }
                Ok(Ok(false)) => {
                    tracing::warn!(operation = %attempt.operation, "the lease was lost; not renewing it");
                    return;
                }
                // The database may be away for a moment: try again at the next look.
                Ok(Err(error)) => {
                    tracing::warn!(operation = %attempt.operation, %error, "renewing the lease failed")
                }
                Err(error) => {
                    tracing::warn!(operation = %attempt.operation, %error, "renewing the lease failed")
                }
            }
        }
    }

    /// Ends operations that were interrupted too often, and their keys.
    async fn settle_exhausted(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let settled = tokio::task::spawn_blocking(move || -> luna_store::Result<()> {
            let now = luna_store::now();
            for op in me.store.exhausted_operations(now)? {
                let given_up = op.given_up(now)?;
                let reason = given_up.last_error().unwrap_or_default().to_owned();
                let keys = me.end_failed(&given_up.payload, &reason, now)?;
                let owner = op.lease_owner().unwrap_or_default();
                let outcome = crate::audit::outcome(&given_up, &me.instance, now);
                if me
                    .store
                    .give_up_operation(&given_up, owner, now, &keys, &outcome)?
                {
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
    /// `token_work_ended` is called once the token calls are over, before
    /// the outcome is written.
    fn execute(
        &self,
        op: Operation,
        accepted: Option<Accepted>,
        token_work_ended: &dyn Fn(),
    ) -> luna_store::Result<Done> {
        let span = tracing::info_span!("operation", id = %op.id, kind = op.payload.kind_name(), attempt = op.attempts());
        let _entered = span.enter();
        // Every write of this attempt's outcome is conditional on the lease it claimed.
        let lease = op.lease_owner().unwrap_or_default().to_owned();
        let outcome = match &op.payload {
            OperationPayload::CreateKey {
                key_id,
                public_key_id,
            } => self.create(&op, *key_id, *public_key_id, accepted),
            OperationPayload::UpdateKey { key_id, changes } => self.update(*key_id, changes),
            OperationPayload::ReplicateKey { key_id } => self.replicate(*key_id),
            OperationPayload::DestroyKey { key_id } => self.destroy(*key_id),
            OperationPayload::RunJob { job_id } => self.run_job(*job_id).map(|()| Vec::new()),
        };
        token_work_ended();
        let now = luna_store::now();
        let outcome = match outcome {
            Err(Failure::Interrupted(reason)) => {
                tracing::info!(%reason, "the module was re-initialised under the operation; starting it again");
                let mut again = op;
                again.pass_on(reason, now, now)?;
                return Ok(Done::held(
                    self.store.retry_operation_later(&again, &lease)?,
                    Done::Recorded,
                ));
            }
            Err(Failure::Away { reason, token, since }) => {
                let away_for = since.elapsed().unwrap_or_default();
                match self.settings.token_outage.checked_sub(away_for) {
                    Some(left) if !left.is_zero() => {
                        let wait = Duration::try_from(left.min(PARKED_AT_MOST)).unwrap_or(Duration::SECOND);
                        tracing::info!(%reason, "the token is away; the operation waits for it");
                        let mut parked = op;
                        parked.park(
                            &token,
                            format!("waiting for the token: {reason}"),
                            now + wait,
                            now,
                        )?;
                        return Ok(Done::held(
                            self.store.retry_operation_later(&parked, &lease)?,
                            Done::Recorded,
                        ));
                    }
                    _ => Err(Failure::Final(format!(
                        "{reason}; work waits at most {} s for a token that is away (--token-outage-secs)",
                        self.settings.token_outage.as_secs()
                    ))),
                }
            }
            Err(Failure::NotHere(reason)) if now - op.created_at < self.settings.pass_on_for => {
                tracing::info!(%reason, "this instance does not see the token; passing the operation on");
                let mut passed = op;
                passed.pass_on(reason, now + PASS_ON_DELAY, now)?;
                return Ok(Done::held(
                    self.store.retry_operation_later(&passed, &lease)?,
                    Done::PassedOn,
                ));
            }
            Err(Failure::NotHere(reason)) => Err(Failure::Transient(reason)),
            other => other,
        };
        let outcome = match outcome {
            Err(Failure::Transient(reason)) => {
                match Operation::retry_delay(op.attempts(), self.settings.retry_base) {
                    Some(delay) => {
                        tracing::warn!(%reason, retry_in_ms = delay.whole_milliseconds(), "operation failed; trying again later");
                        let mut later = op;
                        later.retry_later(reason, now + delay, now)?;
                        return Ok(Done::held(
                            self.store.retry_operation_later(&later, &lease)?,
                            Done::Recorded,
                        ));
                    }
                    None => Err(Failure::Final(format!(
                        "{reason} (attempt {} of {}; the earlier ones failed too)",
                        op.attempts(),
                        luna_domain::operation::MAX_ATTEMPTS
                    ))),
                }
            }
            other => other,
        };
        let (result, keys) = match outcome {
            Ok(mut keys) => {
                for (key, _) in &mut keys {
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
        if let Some(Hook(hook)) = &self.settings.before_outcome {
            hook();
        }
        let mut finished = op;
        finished.finish(result, now)?;
        // Every operation's outcome enters the audit trail, in the same transaction.
        let entry = crate::audit::outcome(&finished, &self.instance, now);
        let recorded = self.store.finish_operation(&finished, &lease, &keys, &entry)?;
        if recorded {
            if let Some(partition) = finished.partition_id {
                self.backlog.finished(partition);
            }
        }
        Ok(Done::held(recorded, Done::Recorded))
    }

    /// Ends what a failed operation began: fails its job, and returns its
    /// keys (with a pair's linked half when the operation took it too) in
    /// their failed state, each with the version it was read at, for the
    /// caller to write.
    fn end_failed(
        &self,
        payload: &OperationPayload,
        reason: &str,
        now: OffsetDateTime,
    ) -> luna_store::Result<Vec<(Key, KeyVersion)>> {
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
        Ok(keys
            .into_iter()
            .filter_map(|mut key| {
                let read = KeyVersion::of(&key);
                key.apply(&KeyEvent::Failed(reason.to_owned()), now).ok()?;
                Some((key, read))
            })
            .collect())
    }
}
