//! An instance's room: how many operations it runs in all and of one
//! partition, each partition's turns at its tokens, and the room a create
//! reserves to be claimed in its own accept transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::backlog::{Admitted, QueueFull};
use crate::runner::{Reserved, Runner, WAITING_TURNS};

/// A create let in: counted in the bound on the work waiting for tokens
/// (`admitted`, kept once its records are written), and the room to run it
/// in this instance at once, if there is any (`reserved`).
#[derive(Debug)]
pub struct Admission {
    pub(crate) admitted: Admitted,
    pub(crate) reserved: Option<Reserved>,
}

/// An operation's place in the counts, from its claim to its recorded
/// outcome; its partition's room is given back once, when its token work
/// ends (`token_work_ended`) or, at the latest, with this.
pub(crate) struct Slot {
    pub(crate) runner: Arc<Runner>,
    pub(crate) partition: Option<Uuid>,
    pub(crate) token_work_over: AtomicBool,
    /// The turn at its partition's tokens, from when the operation got it
    /// until its token work ended.
    pub(crate) turn: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Slot {
    pub(crate) fn token_work_ended(&self) {
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

impl Runner {
    /// Whether a partition with room here has more key operations waiting
    /// (every instance's, as the backlog last read them, with what this
    /// instance accepted and finished since) than this instance runs of it.
    pub(crate) fn worth_looking(&self, room: &luna_store::PartitionRoom) -> bool {
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
    pub(crate) fn partition_room(&self, running: usize) -> usize {
        let turns = self.settings.token_concurrency.max(1);
        if running + turns < self.settings.workers {
            WAITING_TURNS * turns
        } else {
            turns
        }
    }

    /// The turns at `partition`'s tokens: `token_concurrency` operations at
    /// their token work at once (none for a job's, which takes its own).
    pub(crate) fn turns_of(&self, partition: Option<Uuid>) -> Option<Arc<tokio::sync::Semaphore>> {
        let partition = partition?;
        let mut turns = self.turns.lock();
        let turns = turns.entry(partition).or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(
                self.settings.token_concurrency.max(1),
            ))
        });
        Some(Arc::clone(turns))
    }

    /// Lets a create on `partition` in, within the bound on the work waiting
    /// for tokens (else which queue is full and when to try again), with this
    /// instance's room to run it at once if it has any.
    pub fn admit(self: &Arc<Self>, partition: Uuid) -> Result<Admission, QueueFull> {
        let admitted = self.backlog.admit(partition)?;
        Ok(Admission {
            admitted,
            reserved: self.reserve(partition),
        })
    }

    /// Room for one operation of `partition`, if this instance runs
    /// operations, is not stopping, and has room (`workers`, `token_concurrency`).
    fn reserve(self: &Arc<Self>, partition: Uuid) -> Option<Reserved> {
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
    pub(crate) fn token_work_ended(&self, partition: Option<Uuid>) {
        if let Some(n) = self.in_flight.lock().get_mut(&partition) {
            *n = n.saturating_sub(1);
        }
        self.ended.notify_one();
    }

    /// An operation's outcome is recorded (or its room was not used).
    pub(crate) fn ended(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_one();
    }
}
