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
//! (the `work` notifier it is given), an operation ends (and the queue may hold work a
//! partition has room for: `worth_looking`), or a slow poll finds work
//! another instance queued or a dead worker left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use luna_domain::{Key, Operation};
use luna_store::Store;
use parking_lot::Mutex;
use time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::tokens::OpenTokens;

use crate::backlog::Backlog;
use crate::dispatch::StuckOperations;
/// When a passed-on operation may be taken again (by another instance, most likely).
pub(crate) const PASS_ON_DELAY: Duration = Duration::seconds(1);

/// The most operations one claim takes (one transaction).
pub(crate) const CLAIM_AT_MOST: usize = 16;

/// An instance takes (accepts or claims) up to this many times
/// `token_concurrency` of one partition's operations: the ones past
/// `token_concurrency` wait here for a turn at the tokens, so that the next
/// turn is taken without a claim's transaction (see `partition_room`).
pub(crate) const WAITING_TURNS: usize = 2;

/// `poll` times a random factor from `range`. Workers that poll in step stay
/// in step: `just chaos` saw a blind instance take an operation back at the
/// moment its pass-on delay ran out, cycle after cycle, always just before
/// the instance that sees the token looked, until the operation ran out of
/// time. Random waits break the lock step.
pub(crate) fn jittered(poll: StdDuration, range: std::ops::Range<f64>) -> StdDuration {
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
pub(crate) const PARKED_AT_MOST: StdDuration = StdDuration::from_secs(30);

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
    pub(crate) store: Store,
    pub(crate) tokens: Arc<OpenTokens>,
    pub(crate) work: Arc<Notify>,
    pub(crate) settings: RunnerSettings,
    /// This runner's name in leases (unique per process).
    pub(crate) owner: String,
    /// The instance's name, in the audit records of outcomes.
    pub(crate) instance: String,
    pub(crate) stopping: AtomicBool,
    pub(crate) stop: Notify,
    pub(crate) stuck: Arc<StuckOperations>,
    /// Operations at their token work, by partition (`None`: jobs, and
    /// operations stored before their partition was). A partition's room
    /// comes back as its operation's token work ends, before its outcome is
    /// written, so that the next one's claim shares a commit with it.
    pub(crate) in_flight: Mutex<HashMap<Option<Uuid>, usize>>,
    /// Operations running in this instance, from claim to recorded outcome.
    pub(crate) running: std::sync::atomic::AtomicUsize,
    /// Each partition's turns at its tokens (`token_concurrency` of them).
    pub(crate) turns: Mutex<HashMap<Uuid, Arc<tokio::sync::Semaphore>>>,
    /// Told when an operation ends (room for the next).
    pub(crate) ended: Notify,
    /// No claim before then: an operation was passed on (see `jittered`).
    pub(crate) pause_until: Mutex<Option<Instant>>,
    /// Whether the next pass looks at the queue whatever the backlog says:
    /// set when an operation is queued here without being handed over, by
    /// the slow poll (another instance's work, a job, a lease run out), and
    /// after a claim that filled what it could; cleared by a look. Otherwise
    /// a pass looks only when the backlog says a partition with room has
    /// work this instance does not run (`worth_looking`): most creates are
    /// handed to a worker as they are accepted, a look per create cost the
    /// database two reads, and a look that skips a full partition reads its
    /// queue.
    pub(crate) must_look: AtomicBool,
    /// Operations a request claimed for this instance as it accepted them
    /// (`reserve`), with the records it wrote, on their way to the dispatcher.
    pub(crate) handed: tokio::sync::mpsc::UnboundedSender<(Operation, Accepted)>,
    pub(crate) handed_to: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Operation, Accepted)>>>,
    /// The bound on the work waiting for tokens, which creates are admitted under.
    pub(crate) backlog: Arc<Backlog>,
    /// Told when a schedule is made or changed here (`schedules_changed`).
    pub(crate) schedules_changed: Notify,
}

/// The records a create's request wrote in the transaction that claimed its
/// operation: the runner starts from them instead of reading them back. No
/// one else changes them meanwhile: a busy key is neither forgotten nor
/// refreshed, its outcome is written only under the claim's lease, and its
/// partition is neither forgotten nor given other members while it has an
/// operation in flight (`Store::forget_partition`, HA member changes).
#[derive(Debug)]
pub(crate) struct Accepted {
    pub keys: Vec<Key>,
    pub partition: luna_domain::Partition,
}

/// Room in this instance held for an operation a request is about to
/// queue: the request claims it in its own transaction (no claim
/// transaction, no wait for a poll) and hands it over once committed.
/// Dropped without `hand`, the room is given back.
#[derive(Debug)]
pub(crate) struct Reserved {
    pub(crate) runner: Arc<Runner>,
    pub(crate) partition: Option<Uuid>,
    pub(crate) lease: String,
    pub(crate) handed: bool,
}

impl Reserved {
    /// Claims `op` for this instance as of its creation, as the dispatcher would.
    pub(crate) fn claim(&self, op: &mut Operation) -> luna_domain::Result<()> {
        let now = op.created_at;
        op.claim(&self.lease, now, now + self.runner.settings.lease)
    }

    /// Runs `op` (claimed with `claim`, and committed with `accepted`), in
    /// the room held for it.
    pub(crate) fn hand(mut self, op: Operation, accepted: Accepted) {
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
            schedules_changed: Notify::new(),
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
        let mut tasks = vec![
            tokio::spawn(Arc::clone(self).read_backlog()),
            tokio::spawn(Arc::clone(self).fire_schedules()),
        ];
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

    /// Reads the queue's depth every `crate::backlog::READ_EVERY`, until stopped.
    async fn read_backlog(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.backlog.read(&me.store)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "reading the queue's depth failed"),
                Err(error) => tracing::warn!(%error, "reading the queue's depth failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::backlog::READ_EVERY) => {}
                _ = self.stop.notified() => {}
            }
        }
    }
}
