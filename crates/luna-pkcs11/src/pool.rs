//! The idle, logged-in sessions of one token, and the loan of one to a call.

use std::ops::Deref;

use cryptoki::session::Session;
use parking_lot::Mutex;

/// Idle sessions kept per token; more are opened under load and closed after.
const MAX_IDLE_SESSIONS: usize = 16;

/// Sessions a token's calls left for the next ones. A session is in here or
/// on loan to exactly one call, never both: a worker holds one at a time.
#[derive(Debug, Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
}

impl SessionPool {
    /// An idle session, if one is left; the caller opens one otherwise.
    pub(crate) fn take(&self) -> Option<Session> {
        self.idle.lock().pop()
    }

    /// Lends `session` to a call; it comes back here when the loan ends,
    /// unless the call found it broken (`PooledSession::discard`).
    pub(crate) fn lend(&self, session: Session) -> PooledSession<'_> {
        PooledSession {
            pool: self,
            session: Some(session),
        }
    }

    /// Closes every idle session: the token or the module lost them (an
    /// outage, or a re-initialisation about to end them all).
    pub(crate) fn close_all(&self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        drop(idle);
    }

    /// Keeps `session` for a later call (closes it if enough are idle).
    pub(crate) fn put_back(&self, session: Session) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
    }
}

/// A session on loan from the pool; it goes back on drop unless it broke.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // `session` is only taken in `discard` or `drop`, both of which consume the guard.
        match &self.session {
            Some(session) => session,
            None => unreachable!("a pooled session is present until the guard is consumed"),
        }
    }
}

impl PooledSession<'_> {
    /// Ends the loan without returning the session: it is closed.
    pub(crate) fn discard(mut self) {
        self.session.take();
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.put_back(session);
        }
    }
}
