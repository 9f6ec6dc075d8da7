//! The idle, logged-in sessions of one token, and the loan of one to a call.

use std::ops::Deref;
use std::sync::Arc;

use cryptoki::session::Session;
use parking_lot::Mutex;

/// Idle sessions kept per token; more are opened under load and closed after.
const MAX_IDLE_SESSIONS: usize = 16;

/// Sessions a token's calls left for the next ones. A session is in here or
/// on loan to exactly one call, never both: a worker holds one at a time.
#[derive(Debug, Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<ModuleSession>>,
}

impl SessionPool {
    /// An idle session, if one is left; the caller opens one otherwise.
    pub(crate) fn take(&self) -> Option<ModuleSession> {
        self.idle.lock().pop()
    }

    /// Lends `session` to a call; it comes back here when the loan ends,
    /// unless the call found it broken (`PooledSession::discard`).
    pub(crate) fn lend(&self, session: ModuleSession) -> PooledSession<'_> {
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
    pub(crate) fn put_back(&self, session: ModuleSession) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
    }
}

/// A session on loan from the pool; it goes back on drop unless it broke.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<ModuleSession>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // `session` is only taken in `discard` or `drop`, both of which consume the guard.
        match &self.session {
            Some(session) => session.as_session(),
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

/// A session of a module whose end (`C_CloseSession`, on drop) and logout
/// take the module's login lock (`Module::login_state`): openCryptoki 3.8
/// keeps one login for all its slots and, when a session logs out or a
/// token's last session closes, purges the private objects it holds in
/// memory without a lock of its own. Two threads doing so at once corrupt
/// its heap: the API benchmark died in `dlist_remove_node`, one thread
/// closing a dropped server's sessions while another logged out to
/// provision a token. Logins and closes are rare (sessions are pooled), so
/// serialising them costs these modules nothing; on modules that do not race
/// (a Luna) there is no lock, so a slow network login holds no other token.
#[derive(Debug)]
pub(crate) struct ModuleSession {
    session: Option<Session>,
    login_state: LoginLock,
}

/// The module's login lock where it has one (see `ModuleSession`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LoginLock(Option<Arc<Mutex<()>>>);

impl LoginLock {
    /// A lock for a module that races on logins and closes; none otherwise.
    pub(crate) fn when(races: bool) -> LoginLock {
        LoginLock(races.then(Arc::default))
    }

    /// Held for one `C_Login`, `C_Logout` or `C_CloseSession`.
    pub(crate) fn hold(&self) -> Option<parking_lot::MutexGuard<'_, ()>> {
        self.0.as_ref().map(|lock| lock.lock())
    }
}

impl ModuleSession {
    pub(crate) fn new(session: Session, login_state: LoginLock) -> ModuleSession {
        ModuleSession {
            session: Some(session),
            login_state,
        }
    }

    pub(crate) fn as_session(&self) -> &Session {
        match &self.session {
            Some(session) => session,
            None => unreachable!("a module session is present until it is dropped"),
        }
    }

    /// `C_Logout`, under the module's login lock.
    pub(crate) fn logout(&self) -> cryptoki::error::Result<()> {
        let _one_at_a_time = self.login_state.hold();
        self.as_session().logout()
    }
}

impl Deref for ModuleSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        self.as_session()
    }
}

impl Drop for ModuleSession {
    fn drop(&mut self) {
        let _one_at_a_time = self.login_state.hold();
        drop(self.session.take());
    }
}
