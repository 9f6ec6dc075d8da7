//! The bound on the work waiting for tokens: creates queued for a partition,
//! and for all of them, are at most `RunnerSettings::queue_per_partition`
//! and `queue_total`. Past either, a create is refused (a 429) with a
//! `Retry-After` from the rate the queue drains at; nothing accepted is
//! dropped. Without a bound a client could queue work faster than the HSM
//! makes keys (34,614 creates were accepted in 120 s while SoftHSM2 made
//! about 105 a second), and every create's wait would grow without end.
//!
//! The queue is read from the store about once a second (the key
//! operations not finished, by partition: every instance's), and between
//! two readings this instance adds the creates it accepted: several
//! instances on one database may together pass a bound by what they accept
//! within one reading, never by more. The drain rate is measured from
//! successive readings (what left the queue: the depth before, plus what
//! was queued since, less the depth now), so it counts every instance's work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use luna_store::Store;
use parking_lot::Mutex;
use time::OffsetDateTime;
use uuid::Uuid;

/// How often the queue is read from the store.
pub(crate) const READ_EVERY: StdDuration = StdDuration::from_secs(1);

/// The weight of the newest reading in the drain rate (a moving average
/// over a few seconds: steady, yet quick to see a token stop).
const RATE_WEIGHT: f64 = 0.3;

/// The longest `Retry-After` given, and the one given while nothing drains
/// (a token away, say): a client then looks again in that long.
const LONGEST_WAIT_SECS: u64 = 60;

/// What the queue holds for one partition, and how fast it empties.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueState {
    /// Key operations of the partition not finished (queued, running, parked).
    pub depth: i64,
    /// Operations leaving the queue per second, lately.
    pub drain_per_second: f64,
    /// The bound on `depth` past which creates are refused.
    pub limit: i64,
}

/// A create refused because a queue is full, and how long until it may not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFull {
    pub message: String,
    pub retry_after_secs: u64,
}

#[derive(Debug)]
pub struct Backlog {
    per_partition: i64,
    total: i64,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// The last reading: unfinished key operations by partition.
    read: HashMap<Uuid, i64>,
    /// Creates this instance accepted since the last reading began.
    accepted: HashMap<Uuid, i64>,
    /// Key operations this instance finished since the last reading began.
    finished: HashMap<Uuid, i64>,
    /// Creates admitted and not yet committed (or given back).
    admitting: HashMap<Uuid, i64>,
    /// Operations leaving the queue per second, by partition.
    drain: HashMap<Uuid, f64>,
    /// When the last reading began (the store's clock and this process's).
    read_at: Option<(OffsetDateTime, Instant)>,
}

impl Counts {
    fn depth(&self, partition: &Uuid) -> i64 {
        let count = |counts: &HashMap<Uuid, i64>| counts.get(partition).copied().unwrap_or(0);
        (count(&self.read) + count(&self.accepted) + count(&self.admitting) - count(&self.finished)).max(0)
    }

    fn total_depth(&self) -> i64 {
        let mut partitions: Vec<&Uuid> = self.read.keys().collect();
        partitions.extend(self.accepted.keys().chain(self.admitting.keys()));
        partitions.sort();
        partitions.dedup();
        partitions.into_iter().map(|p| self.depth(p)).sum()
    }
}

/// Room for one create, held until it is committed (`kept`) or given back (dropped).
#[derive(Debug)]
pub struct Admitted {
    backlog: Arc<Backlog>,
    partition: Uuid,
    kept: bool,
}

impl Admitted {
    /// The create committed: it is in the queue now.
    pub fn kept(mut self) {
        self.kept = true;
        let mut counts = self.backlog.counts.lock();
        decrement(&mut counts.admitting, self.partition);
        *counts.accepted.entry(self.partition).or_default() += 1;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.kept {
            decrement(&mut self.backlog.counts.lock().admitting, self.partition);
        }
    }
}

fn decrement(counts: &mut HashMap<Uuid, i64>, partition: Uuid) {
    if let Some(n) = counts.get_mut(&partition) {
        *n -= 1;
        if *n <= 0 {
            counts.remove(&partition);
        }
    }
}

/// Seconds to wait for `excess` operations to leave at `rate` a second.
fn wait_for(excess: i64, rate: f64) -> u64 {
    if rate <= 0.0 {
        return LONGEST_WAIT_SECS;
    }
    ((excess.max(1) as f64 / rate).ceil() as u64).clamp(1, LONGEST_WAIT_SECS)
}

impl Backlog {
    pub fn new(per_partition: usize, total: usize) -> Arc<Backlog> {
        Arc::new(Backlog {
            per_partition: i64::try_from(per_partition).unwrap_or(i64::MAX),
            total: i64::try_from(total).unwrap_or(i64::MAX),
            counts: Mutex::default(),
        })
    }

    /// Room for one more create on `partition`, or a refusal saying which
    /// queue is full and when to try again.
    pub fn admit(self: &Arc<Self>, partition: Uuid) -> Result<Admitted, QueueFull> {
        let mut counts = self.counts.lock();
        let depth = counts.depth(&partition);
        if depth >= self.per_partition {
            let rate = counts.drain.get(&partition).copied().unwrap_or(0.0);
            return Err(QueueFull {
                message: format!(
                    "the partition has {depth} key operations waiting, its most (--queue-per-partition); \
                     they are leaving at {rate:.1} a second: try again later"
                ),
                retry_after_secs: wait_for(depth - self.per_partition + 1, rate),
            });
        }
        let total = counts.total_depth();
        if total >= self.total {
            let rate: f64 = counts.drain.values().sum();
            return Err(QueueFull {
                message: format!(
                    "{total} key operations are waiting, the most this service queues (--queue-total); \
                     they are leaving at {rate:.1} a second: try again later"
                ),
                retry_after_secs: wait_for(total - self.total + 1, rate),
            });
        }
        *counts.admitting.entry(partition).or_default() += 1;
        Ok(Admitted {
            backlog: Arc::clone(self),
            partition,
            kept: false,
        })
    }

    /// The bound on one partition's queue.
    pub fn partition_limit(&self) -> i64 {
        self.per_partition
    }

    /// The bound on all partitions' queues together.
    pub fn total_limit(&self) -> i64 {
        self.total
    }

    /// This instance finished (wrote the outcome of) a key operation of `partition`.
    pub fn finished(&self, partition: Uuid) {
        *self.counts.lock().finished.entry(partition).or_default() += 1;
    }

    /// What the queue holds for `partition` now.
    pub fn state_of(&self, partition: Uuid) -> QueueState {
        let counts = self.counts.lock();
        QueueState {
            depth: counts.depth(&partition),
            drain_per_second: counts.drain.get(&partition).copied().unwrap_or(0.0),
            limit: self.per_partition,
        }
    }

    /// Every partition the queue holds work of, with its state.
    pub fn states(&self) -> Vec<(Uuid, QueueState)> {
        let partitions: Vec<Uuid> = {
            let counts = self.counts.lock();
            let mut all: Vec<Uuid> = counts
                .read
                .keys()
                .chain(counts.accepted.keys())
                .chain(counts.admitting.keys())
                .chain(counts.drain.keys())
                .copied()
                .collect();
            all.sort();
            all.dedup();
            all
        };
        partitions.into_iter().map(|p| (p, self.state_of(p))).collect()
    }

    /// Reads the queue from the store, and the rate it drained at since the
    /// reading before.
    pub fn read(&self, store: &Store) -> luna_store::Result<()> {
        let began = (luna_store::now(), Instant::now());
        let (previous, accepted_before, finished_before) = {
            let counts = self.counts.lock();
            (counts.read_at, counts.accepted.clone(), counts.finished.clone())
        };
        let depths = store.queued_key_operations()?;
        let queued_since = match previous {
            Some((at, _)) => store.key_operations_queued_since(at)?,
            None => HashMap::new(),
        };
        let mut counts = self.counts.lock();
        if let Some((_, then)) = previous {
            let seconds = began.1.duration_since(then).as_secs_f64().max(0.001);
            // A partition whose work came and went between two readings is
            // only in what was queued since.
            let mut partitions: Vec<Uuid> = counts
                .read
                .keys()
                .chain(depths.keys())
                .chain(queued_since.keys())
                .copied()
                .collect();
            partitions.sort();
            partitions.dedup();
            for partition in partitions {
                let before = counts.read.get(&partition).copied().unwrap_or(0);
                let now = depths.get(&partition).copied().unwrap_or(0);
                let queued = queued_since.get(&partition).copied().unwrap_or(0);
                let left = (before + queued - now).max(0) as f64 / seconds;
                let rate = counts.drain.entry(partition).or_insert(left);
                *rate = RATE_WEIGHT * left + (1.0 - RATE_WEIGHT) * *rate;
            }
            // A partition with nothing queued, that drains nothing, is forgotten.
            counts
                .drain
                .retain(|p, rate| depths.contains_key(p) || *rate >= 0.01);
        }
        // What was accepted or finished before this reading began is in it.
        let counts = &mut *counts;
        for (local, before) in [
            (&mut counts.accepted, accepted_before),
            (&mut counts.finished, finished_before),
        ] {
            for (partition, n) in before {
                if let Some(since) = local.get_mut(&partition) {
                    *since -= n;
                }
            }
            local.retain(|_, n| *n > 0);
        }
        counts.read = depths;
        counts.read_at = Some(began);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_full_partition_refuses_until_a_create_is_given_back_and_the_total_bounds_all() {
        let backlog = Backlog::new(2, 3);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = backlog.admit(a).unwrap();
        let second = backlog.admit(a).unwrap();
        let full = backlog.admit(a).unwrap_err();
        assert!(full.message.contains("--queue-per-partition"), "{}", full.message);
        assert_eq!(full.retry_after_secs, LONGEST_WAIT_SECS, "nothing drains yet");
        drop(second);
        let second = backlog.admit(a).unwrap();
        first.kept();
        second.kept();
        assert_eq!(backlog.state_of(a).depth, 2);
        let third = backlog.admit(b).unwrap();
        let over = backlog.admit(b).unwrap_err();
        assert!(over.message.contains("--queue-total"), "{}", over.message);
        drop(third);
    }

    #[test]
    fn the_wait_follows_the_drain_rate() {
        assert_eq!(wait_for(1, 100.0), 1);
        assert_eq!(wait_for(250, 100.0), 3);
        assert_eq!(wait_for(10, 0.0), LONGEST_WAIT_SECS);
        assert_eq!(wait_for(1_000_000, 1.0), LONGEST_WAIT_SECS);
    }
}
