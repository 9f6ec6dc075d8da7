//! How a call reaches its token: on a pooled logged-in session (a write
//! holding the token's write lock where the module needs it), retried once on
//! a fresh session when the error may mean the session or the token went
//! away, and the token called away when a fresh session cannot reach it.

use super::*;

impl Pkcs11Token {
    /// The token's slot in the module's current generation (inside the gate).
    pub(super) fn slot(&self) -> Result<Slot> {
        let generation = self.module.generation();
        if self.slot_generation.load(Ordering::SeqCst) != generation {
            let (slot, _) = self
                .module
                .find_slot(&self.info.label, Some(&self.info.serial_number))?;
            *self.slot.lock() = slot;
            self.slot_generation.store(generation, Ordering::SeqCst);
        }
        Ok(*self.slot.lock())
    }

    /// A new session on the token, logged in (the PIN proven again if the
    /// module says some session is logged in already).
    pub(super) fn fresh_session(&self) -> Result<ModuleSession> {
        let session = self.module.open_session(self.slot()?)?;
        self.module
            .login(&session, &self.info.label, &self.info.serial_number, &self.pin)?;
        Ok(session)
    }

    pub(super) fn session(&self) -> Result<PooledSession<'_>> {
        let session = match self.sessions.take() {
            Some(session) => session,
            None => self.fresh_session()?,
        };
        Ok(self.sessions.lend(session))
    }

    /// Runs `work` on a pooled session (see the type's page for what happens
    /// when the token seems gone). Reads may run together; on SoftHSM2 and
    /// openCryptoki none runs beside a write (see `writing`).
    pub(super) fn with_session<T>(&self, work: impl FnMut(&OnSession<'_>) -> Result<T>) -> Result<T> {
        self.call(false, Again::Read, work)
    }

    /// `with_session` for calls that create, change or destroy objects.
    /// SoftHSM2's file store fails a write (CKR_GENERAL_ERROR) when another
    /// session writes, or re-reads the token's objects, at the same time.
    pub(super) fn writing<T>(&self, work: impl FnMut(&OnSession<'_>) -> Result<T>) -> Result<T> {
        self.call(true, Again::Write, work)
    }

    pub(super) fn call<T>(
        &self,
        write: bool,
        again: Again,
        mut work: impl FnMut(&OnSession<'_>) -> Result<T>,
    ) -> Result<T> {
        self.ready()?;
        let error = match self.attempt(write, &mut work) {
            Err(error) if error.signals_absence() => error,
            done => return done,
        };
        self.drop_sessions();
        if let Err(look) = self.check() {
            return Err(self.went_away(format!("{error}; looked at again: {look}")));
        }
        let retry = match again {
            Again::Read => true,
            Again::Write => error.refused_for_its_session(),
            Again::Never => false,
        };
        if !retry {
            return Err(error);
        }
        match self.attempt(write, &mut work) {
            // The same on a fresh session that a check found working: gone after all.
            Err(again) if again.signals_absence() => {
                Err(self.went_away(format!("{again}, again on a fresh session")))
            }
            done => done,
        }
    }

    /// One attempt of `work` inside the module's gate, on one session.
    pub(super) fn attempt<T>(
        &self,
        write: bool,
        work: &mut impl FnMut(&OnSession<'_>) -> Result<T>,
    ) -> Result<T> {
        let _call = self.module.enter();
        let _writes = self.hold_writes(write);
        let generation = self.module.generation();
        let session = self.session()?;
        if !write {
            // A session whose login was lost answers a find or a scan with
            // the public objects only, not an error: a read must not
            // conclude absence from that.
            logged_in(&session)?;
        }
        let on = OnSession {
            session: &session,
            generation,
        };
        match work(&on) {
            Err(error) if error.breaks_session() => {
                session.discard();
                Err(error)
            }
            result => result,
        }
    }

    /// Fails at once while the token is known to be away; looks again when due.
    pub(super) fn ready(&self) -> Result<()> {
        if self.health.away_and_not_due()
            || (!self.health.snapshot().is_reachable() && !self.probe().is_reachable())
        {
            return Err(self.away_error());
        }
        Ok(())
    }

    /// Whether the token answers now: its slot still holds it (label and
    /// serial), a new session opens and logs in, and the session answers.
    pub(super) fn check(&self) -> Result<()> {
        let _call = self.module.enter();
        let _writes = self.hold_writes(false);
        let slot = self.slot()?;
        let holds_it = self
            .module
            .read_token_info(slot)
            .is_ok_and(|t| t.label == self.info.label && t.serial_number == self.info.serial_number);
        if !holds_it {
            // Renumbered, or gone: look for it among every slot.
            let (slot, _) = self
                .module
                .find_slot(&self.info.label, Some(&self.info.serial_number))?;
            *self.slot.lock() = slot;
        }
        let session = self.fresh_session()?;
        logged_in(&session)?;
        self.sessions.put_back(session);
        Ok(())
    }

    pub(super) fn drop_sessions(&self) {
        let _call = self.module.enter();
        let _writes = self.hold_writes(false);
        self.sessions.close_all();
    }

    /// On modules that race (see `Module`), the token's write lock: held
    /// exclusively by a write, shared by everything else. Taken inside the
    /// module's gate, never the other way round.
    pub(super) fn hold_writes(
        &self,
        write: bool,
    ) -> (Option<RwLockWriteGuard<'_, ()>>, Option<RwLockReadGuard<'_, ()>>) {
        let serialize = self.module.serialize_object_writes;
        (
            (serialize && write).then(|| self.object_writes.write()),
            (serialize && !write).then(|| self.object_writes.read()),
        )
    }

    /// Records the token away (saying why) and returns the error callers get.
    pub(super) fn went_away(&self, why: String) -> TokenError {
        if self.health.snapshot().is_reachable() {
            tracing::warn!(token = %self.info.label, serial = %self.info.serial_number, error = %why,
                "the token is unreachable; its work waits for it");
        }
        self.health.went_away(why);
        self.away_error()
    }

    pub(super) fn away_error(&self) -> TokenError {
        let now = self.health.snapshot();
        let since = now.away_since.unwrap_or_else(SystemTime::now);
        TokenError::Away {
            label: self.info.label.clone(),
            serial: self.info.serial_number.clone(),
            since,
            away_secs: since.elapsed().map_or(0, |d| d.as_secs()),
            cause: now.last_error.unwrap_or_default(),
        }
    }
}
