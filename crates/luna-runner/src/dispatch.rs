//! The dispatcher: claims what there is room for, launches each claimed
//! (or handed-over) operation as a task of its own, and keeps each
//! attempt's lease while its token works, calling a call that runs past
//! `stuck_after` stuck.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use luna_domain::Operation;
use parking_lot::Mutex;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::room::Slot;
use crate::runner::{jittered, Accepted, Runner, CLAIM_AT_MOST};

/// What became of a claimed operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Done {
    /// Its outcome (or its retry) was written.
    Recorded,
    /// Handed back, uncounted, for an instance that sees its token.
    PassedOn,
    /// Another worker had taken it over: nothing was written.
    LeaseLost,
}

impl Done {
    /// `done` if the write happened while the lease was held, else `LeaseLost`.
    pub(crate) fn held(written: bool, done: Done) -> Done {
        if written {
            done
        } else {
            Done::LeaseLost
        }
    }
}

/// Operations whose token call has run past `RunnerSettings::stuck_after`,
/// by the lease the attempt holds (one operation may be attempted again
/// while an earlier attempt still hangs), shared with the health check.
#[derive(Debug, Default)]
pub struct StuckOperations(Mutex<HashMap<String, StuckCall>>);

/// One hung attempt: its operation, what it does, the call and since when.
#[derive(Debug, Clone)]
pub(crate) struct StuckCall {
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

    pub(crate) fn insert(&self, lease: &str, call: StuckCall) {
        self.0.lock().insert(lease.to_owned(), call);
    }

    /// True if the attempt under `lease` had been called stuck.
    pub(crate) fn remove(&self, lease: &str) -> bool {
        self.0.lock().remove(lease).is_some()
    }
}

/// One claimed attempt, as its renewer knows it.
#[derive(Debug)]
pub(crate) struct Attempt {
    operation: Uuid,
    kind: &'static str,
    /// The lease name it claimed under (`Runner::owner` and a claim id).
    lease: String,
    /// Set by the attempt's blocking thread when it starts.
    thread: Arc<std::sync::OnceLock<std::thread::ThreadId>>,
}

impl Runner {
    /// Runs `op` (already counted) as a task of its own.
    pub(crate) fn launch(
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
    pub(crate) async fn dispatch(self: Arc<Self>) {
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

    pub(crate) async fn run(self: Arc<Self>, op: Operation, accepted: Option<Accepted>, slot: Slot) {
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
    pub(crate) async fn keep_lease(
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
    pub(crate) async fn renew(self: Arc<Self>, attempt: Attempt, mut held: OffsetDateTime) {
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
}
