//! The calls in flight on a module, and the moments when there are none.
//!
//! Re-initialising a module (`C_Finalize`, then `C_Initialize`) ends every
//! session and object handle the process holds on it, so it may only run
//! while no call is in flight. Every call enters the module's gate; a
//! re-initialisation closes the gate (new calls wait), waits a bounded time
//! for the calls inside to leave, and opens it again when done. A call that
//! hangs therefore never blocks the others for longer than that bound: the
//! re-initialisation gives up and is tried again later.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: usize,
    closed: bool,
}

thread_local! {
    /// The gates this thread is inside, by address, once per entry: a call
    /// made while the thread is already inside (a module call within a token
    /// call) enters again without waiting, or it would wait for a
    /// re-initialisation that waits for it.
    static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Gate {
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Whether this thread is inside the gate. A thread whose locals are
    /// gone (the main thread in an exit handler) is inside nothing.
    fn held_by_this_thread(&self) -> bool {
        INSIDE
            .try_with(|inside| inside.borrow().contains(&self.address()))
            .unwrap_or(false)
    }

    /// Enters for one call; waits while the module is being re-initialised.
    pub(crate) fn enter(&self) -> Entered<'_> {
        if !self.held_by_this_thread() {
            let mut state = self.state.lock();
            while state.closed {
                self.changed.wait(&mut state);
            }
            state.in_flight += 1;
        } else {
            self.state.lock().in_flight += 1;
        }
        // A thread whose locals are gone (an exit handler) keeps no record.
        let _ = INSIDE.try_with(|inside| inside.borrow_mut().push(self.address()));
        Entered { gate: self }
    }

    /// Closes the gate once every call has left, waiting at most `within`;
    /// `None` if they did not (or this thread is inside itself). The gate
    /// opens again when the returned guard drops.
    pub(crate) fn close(&self, within: Duration) -> Option<Closed<'_>> {
        if self.held_by_this_thread() {
            return None;
        }
        let deadline = Instant::now() + within;
        let mut state = self.state.lock();
        // Another re-initialisation is under way: this one is not needed.
        if state.closed {
            return None;
        }
        state.closed = true;
        while state.in_flight > 0 {
            if self.changed.wait_until(&mut state, deadline).timed_out() && state.in_flight > 0 {
                state.closed = false;
                self.changed.notify_all();
                return None;
            }
        }
        Some(Closed { gate: self })
    }
}

/// One call inside the gate.
#[derive(Debug)]
pub(crate) struct Entered<'a> {
    gate: &'a Gate,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let address = self.gate.address();
        let _ = INSIDE.try_with(|inside| {
            let mut inside = inside.borrow_mut();
            if let Some(at) = inside.iter().rposition(|a| *a == address) {
                inside.remove(at);
            }
        });
        let mut state = self.gate.state.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            self.gate.changed.notify_all();
        }
    }
}

/// The gate closed, no call inside; it opens when this drops.
#[derive(Debug)]
pub(crate) struct Closed<'a> {
    gate: &'a Gate,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.state.lock().closed = false;
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn closing_waits_for_the_calls_inside_and_holds_new_ones_back() {
        let gate = Arc::new(Gate::default());
        let (entered, leave) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let inside = {
            let gate = Arc::clone(&gate);
            let (entered, leave) = (entered.0, leave.1);
            std::thread::spawn(move || {
                let _call = gate.enter();
                entered.send(()).unwrap_or_default();
                leave.recv().unwrap_or_default();
            })
        };
        entered.1.recv().unwrap_or_default();
        assert!(
            gate.close(Duration::from_millis(50)).is_none(),
            "a call is inside"
        );
        let closer = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.close(Duration::from_secs(10)).map(|_closed| ()).is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        let late_entered = Arc::new(AtomicBool::new(false));
        let late = {
            let (gate, late_entered) = (Arc::clone(&gate), Arc::clone(&late_entered));
            std::thread::spawn(move || {
                let _call = gate.enter();
                late_entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !late_entered.load(Ordering::SeqCst),
            "a new call waits while the gate closes"
        );
        leave.0.send(()).unwrap_or_default();
        assert!(inside.join().is_ok());
        assert_eq!(closer.join().ok(), Some(true), "closed once the call left");
        assert!(late.join().is_ok());
        assert!(
            late_entered.load(Ordering::SeqCst),
            "the waiting call ran once the gate opened"
        );
    }

    #[test]
    fn a_thread_inside_enters_again_and_cannot_close() {
        let gate = Gate::default();
        let outer = gate.enter();
        let inner = gate.enter();
        assert!(gate.close(Duration::from_millis(10)).is_none());
        drop(inner);
        drop(outer);
        assert!(gate.close(Duration::from_millis(10)).is_some());
    }
}
