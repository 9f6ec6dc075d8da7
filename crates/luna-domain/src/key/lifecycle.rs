//! A key's life: the events it can be told and the one table of legal moves.

use crate::error::{DomainError, Result};

use super::{KeyStatus, OperationKind, OperationStatus};

/// A lifecycle without its error text (see `KeyLifecycle::shape`).
type Shape = (KeyStatus, OperationKind, OperationStatus, bool);

/// What a key's life can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// A user asks for an update, replicate or delete-from-HSM.
    Begin(OperationKind),
    /// The running operation finished on the token(s).
    Succeeded,
    /// The running operation failed; the reason is kept for the user.
    Failed(String),
    /// A refresh found the object on no member any more.
    Vanished,
}

/// The part of a key record that changes as operations run. Its fields are
/// private: a lifecycle is one of the two beginnings ([`creating`],
/// [`discovered`]), a state [`next`] moved to, or one read back from storage
/// that the machine can reach ([`restore`]); never a state set by hand.
///
/// [`creating`]: KeyLifecycle::creating
/// [`discovered`]: KeyLifecycle::discovered
/// [`next`]: KeyLifecycle::next
/// [`restore`]: KeyLifecycle::restore
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLifecycle {
    status: KeyStatus,
    operation: OperationKind,
    operation_status: OperationStatus,
    operation_error: Option<String>,
}

impl KeyLifecycle {
    /// A key whose creation was accepted and has not run yet.
    pub fn creating() -> Self {
        KeyLifecycle {
            status: KeyStatus::InProgress,
            operation: OperationKind::KeyCreate,
            operation_status: OperationStatus::InProgress,
            operation_error: None,
        }
    }

    /// A key found on a token by refresh rather than made here.
    pub fn discovered() -> Self {
        KeyLifecycle {
            status: KeyStatus::Available,
            operation: OperationKind::KeyCreate,
            operation_status: OperationStatus::Completed,
            operation_error: None,
        }
    }

    /// Where the key is in its life.
    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// The last operation begun on the key.
    pub fn operation(&self) -> OperationKind {
        self.operation
    }

    /// How that operation stands; `in_progress` makes the key busy.
    pub fn operation_status(&self) -> OperationStatus {
        self.operation_status
    }

    /// Why that operation failed; `None` unless it did.
    pub fn operation_error(&self) -> Option<&str> {
        self.operation_error.as_deref()
    }

    /// A lifecycle as storage kept it, if the machine can reach it from one
    /// of its beginnings; otherwise why not (the record is corrupt, or was
    /// written by hand). Reachability is worked out from [`next`] itself,
    /// so there is one table of legal moves, not two.
    ///
    /// [`next`]: KeyLifecycle::next
    pub fn restore(
        status: KeyStatus,
        operation: OperationKind,
        operation_status: OperationStatus,
        operation_error: Option<String>,
    ) -> Result<KeyLifecycle> {
        let stored = KeyLifecycle {
            status,
            operation,
            operation_status,
            operation_error,
        };
        // Worked out once: every key row read goes through here.
        static REACHABLE: std::sync::LazyLock<Vec<Shape>> = std::sync::LazyLock::new(|| {
            KeyLifecycle::reachable()
                .iter()
                .map(KeyLifecycle::shape)
                .collect()
        });
        if REACHABLE.contains(&stored.shape()) {
            Ok(stored)
        } else {
            Err(DomainError::invalid(format!(
                "no key can be {status} after {operation} {operation_status}{}",
                if stored.operation_error.is_some() {
                    " with an error"
                } else {
                    ""
                }
            )))
        }
    }

    /// What `restore` compares: an error's text is whatever the token said,
    /// so only whether there is one counts.
    fn shape(&self) -> Shape {
        (
            self.status,
            self.operation,
            self.operation_status,
            self.operation_error.is_some(),
        )
    }

    /// Every lifecycle the machine reaches from its beginnings.
    fn reachable() -> Vec<KeyLifecycle> {
        let events: Vec<KeyEvent> = OperationKind::ALL
            .iter()
            .map(|kind| KeyEvent::Begin(*kind))
            .chain([
                KeyEvent::Succeeded,
                KeyEvent::Failed(String::new()),
                KeyEvent::Vanished,
            ])
            .collect();
        crate::machine::reachable(
            vec![KeyLifecycle::creating(), KeyLifecycle::discovered()],
            &events,
            |l, e| l.next(e).ok(),
        )
    }

    /// Whether an operation is running on the key: then it takes no other
    /// (a 409) and a refresh leaves it to that operation.
    pub fn is_busy(&self) -> bool {
        self.operation_status == OperationStatus::InProgress
    }

    /// The next state, or why the event is not allowed now: beginning an
    /// operation on a busy or not-`AVAILABLE` key is a
    /// [`DomainError::Conflict`] (the user may retry later); any other move
    /// the machine lacks (`Begin(KeyCreate)`, an outcome with nothing
    /// running, `Vanished` on a busy or not-`AVAILABLE` key) is a
    /// [`DomainError::IllegalTransition`].
    pub fn next(&self, event: &KeyEvent) -> Result<KeyLifecycle> {
        let illegal = || DomainError::IllegalTransition {
            machine: "key",
            from: format!("{}/{}/{}", self.status, self.operation, self.operation_status),
            event: match event {
                KeyEvent::Begin(kind) => format!("begin {kind}"),
                KeyEvent::Succeeded => "success".into(),
                KeyEvent::Failed(_) => "failure".into(),
                KeyEvent::Vanished => "vanished".into(),
            },
        };
        match event {
            KeyEvent::Begin(OperationKind::KeyCreate) => Err(illegal()),
            KeyEvent::Begin(kind) => {
                if self.is_busy() {
                    return Err(DomainError::Conflict(format!(
                        "the key has a {} operation in progress; wait for it to end",
                        self.operation
                    )));
                }
                if self.status != KeyStatus::Available {
                    return Err(DomainError::Conflict(format!(
                        "{kind} needs an AVAILABLE key; this key is {}",
                        self.status
                    )));
                }
                Ok(KeyLifecycle {
                    status: KeyStatus::Available,
                    operation: *kind,
                    operation_status: OperationStatus::InProgress,
                    operation_error: None,
                })
            }
            KeyEvent::Succeeded if self.is_busy() => Ok(KeyLifecycle {
                status: match self.operation {
                    OperationKind::KeyCreate => KeyStatus::Available,
                    OperationKind::KeyDestroy => KeyStatus::Deleted,
                    OperationKind::KeyUpdate | OperationKind::KeyReplicate => self.status,
                },
                operation: self.operation,
                operation_status: OperationStatus::Completed,
                operation_error: None,
            }),
            KeyEvent::Failed(reason) if self.is_busy() => Ok(KeyLifecycle {
                status: match self.operation {
                    OperationKind::KeyCreate => KeyStatus::Failed,
                    _ => self.status,
                },
                operation: self.operation,
                operation_status: OperationStatus::Failed,
                operation_error: Some(reason.clone()),
            }),
            KeyEvent::Vanished if !self.is_busy() && self.status == KeyStatus::Available => {
                Ok(KeyLifecycle {
                    status: KeyStatus::Deleted,
                    ..self.clone()
                })
            }
            KeyEvent::Succeeded | KeyEvent::Failed(_) | KeyEvent::Vanished => Err(illegal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's walk-through as hand-written rows (from, event, what
    /// follows), not derived from `next`: create, PATCH, replicate, delete
    /// from HSM, a refresh that finds the object gone, and failures. Every
    /// reachable (state, event) pair not listed here must be refused.
    #[test]
    fn the_key_machine_moves_as_the_reference_describes_and_no_other_way() {
        use KeyStatus::{Available, Deleted, Failed, InProgress as Busy};
        use OperationKind::{
            KeyCreate as Create, KeyDestroy as Destroy, KeyReplicate as Replicate, KeyUpdate as Update,
        };
        use OperationStatus::{Completed as Done, Failed as Broke, InProgress as Running};
        let life = |status, operation, operation_status, error: Option<&str>| KeyLifecycle {
            status,
            operation,
            operation_status,
            operation_error: error.map(str::to_owned),
        };
        let failed = || KeyEvent::Failed("CKR_DEVICE_ERROR".into());
        let legal = [
            // POST /keys: accepted, then made, or not.
            (
                life(Busy, Create, Running, None),
                KeyEvent::Succeeded,
                life(Available, Create, Done, None),
            ),
            (
                life(Busy, Create, Running, None),
                failed(),
                life(Failed, Create, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // PATCH on an AVAILABLE key, then its outcome.
            (
                life(Available, Create, Done, None),
                KeyEvent::Begin(Update),
                life(Available, Update, Running, None),
            ),
            (
                life(Available, Update, Running, None),
                KeyEvent::Succeeded,
                life(Available, Update, Done, None),
            ),
            (
                life(Available, Update, Running, None),
                failed(),
                life(Available, Update, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // Replicate after a PATCH.
            (
                life(Available, Update, Done, None),
                KeyEvent::Begin(Replicate),
                life(Available, Replicate, Running, None),
            ),
            (
                life(Available, Replicate, Running, None),
                KeyEvent::Succeeded,
                life(Available, Replicate, Done, None),
            ),
            // Delete from HSM, even after a failed PATCH: DELETED, or still AVAILABLE with the reason.
            (
                life(Available, Update, Broke, Some("x")),
                KeyEvent::Begin(Destroy),
                life(Available, Destroy, Running, None),
            ),
            (
                life(Available, Destroy, Running, None),
                KeyEvent::Succeeded,
                life(Deleted, Destroy, Done, None),
            ),
            (
                life(Available, Destroy, Running, None),
                failed(),
                life(Available, Destroy, Broke, Some("CKR_DEVICE_ERROR")),
            ),
            // A refresh finds an idle AVAILABLE key on no member.
            (
                life(Available, Create, Done, None),
                KeyEvent::Vanished,
                life(Deleted, Create, Done, None),
            ),
            (
                life(Available, Destroy, Broke, Some("x")),
                KeyEvent::Vanished,
                life(Deleted, Destroy, Broke, Some("x")),
            ),
        ];
        for (from, event, to) in &legal {
            assert_eq!(from.next(event).as_ref(), Ok(to), "{from:?} on {event:?}");
        }
        let refused = [
            (life(Busy, Create, Running, None), KeyEvent::Begin(Update)),
            (life(Busy, Create, Running, None), KeyEvent::Vanished),
            (life(Deleted, Destroy, Done, None), KeyEvent::Begin(Update)),
            (life(Failed, Create, Broke, Some("x")), KeyEvent::Begin(Destroy)),
            (life(Available, Create, Done, None), KeyEvent::Begin(Create)),
            (life(Available, Create, Done, None), KeyEvent::Succeeded),
            (life(Deleted, Create, Done, None), KeyEvent::Vanished),
        ];
        for (from, event) in &refused {
            assert!(from.next(event).is_err(), "{from:?} on {event:?}");
        }
        // Everything else the machine can be in, on every event: only what the rows list.
        let events = [
            KeyEvent::Begin(Create),
            KeyEvent::Begin(Update),
            KeyEvent::Begin(Replicate),
            KeyEvent::Begin(Destroy),
            KeyEvent::Succeeded,
            failed(),
            KeyEvent::Vanished,
        ];
        let reachable = KeyLifecycle::reachable();
        assert_eq!(reachable.len(), 18, "{reachable:#?}");
        let shape = |l: &KeyLifecycle| {
            (
                l.status,
                l.operation,
                l.operation_status,
                l.operation_error.is_some(),
            )
        };
        for from in &reachable {
            for event in &events {
                let listed = legal.iter().find(|(f, e, _)| {
                    shape(f) == shape(from)
                        && std::mem::discriminant(e) == std::mem::discriminant(event)
                        && (!matches!(e, KeyEvent::Begin(_)) || e == event)
                });
                match (from.next(event), listed) {
                    (Ok(to), Some((_, _, expected))) => {
                        assert_eq!(shape(&to), shape(expected), "{from:?} on {event:?}")
                    }
                    (Err(_), None) => {}
                    (got, listed) => {
                        // Moves the rows do not show from this exact state
                        // are the same rule from a sibling state; they must
                        // keep the status and shape the rules of the rows give.
                        assert!(
                            got.is_ok() && listed.is_none() && sibling_move(from, event),
                            "{from:?} on {event:?}: {got:?}, rows say {listed:?}"
                        );
                    }
                }
            }
        }
    }

    /// A move the rows show from a sibling state (same status and event,
    /// another last operation): beginning an operation on an idle AVAILABLE
    /// key, an outcome of a running one, a refresh finding an idle one gone.
    fn sibling_move(from: &KeyLifecycle, event: &KeyEvent) -> bool {
        match event {
            KeyEvent::Begin(kind) => {
                *kind != OperationKind::KeyCreate && from.status == KeyStatus::Available && !from.is_busy()
            }
            KeyEvent::Succeeded | KeyEvent::Failed(_) => from.is_busy(),
            KeyEvent::Vanished => from.status == KeyStatus::Available && !from.is_busy(),
        }
    }

    #[test]
    fn only_states_the_machine_reaches_are_restored_from_storage() {
        use KeyStatus as S;
        use OperationKind as K;
        use OperationStatus as O;
        assert!(KeyLifecycle::restore(
            S::Available,
            K::KeyUpdate,
            O::Failed,
            Some("CKR_DEVICE_ERROR".into())
        )
        .is_ok());
        assert_eq!(
            KeyLifecycle::restore(S::InProgress, K::KeyCreate, O::InProgress, None).unwrap(),
            KeyLifecycle::creating()
        );
        for (status, operation, operation_status, error) in [
            (S::Deleted, K::KeyUpdate, O::InProgress, None),
            (S::Available, K::KeyCreate, O::Completed, Some("x".to_owned())),
            (S::Failed, K::KeyUpdate, O::Failed, Some("x".to_owned())),
            (S::InProgress, K::KeyDestroy, O::InProgress, None),
        ] {
            let err = KeyLifecycle::restore(status, operation, operation_status, error).unwrap_err();
            assert!(err.to_string().starts_with("no key can be"), "{err}");
        }
    }

    #[test]
    fn a_second_mutation_while_busy_is_a_conflict_with_a_reason() {
        let err = KeyLifecycle::creating()
            .next(&KeyEvent::Begin(OperationKind::KeyUpdate))
            .unwrap_err();
        assert!(matches!(err, DomainError::Conflict(_)));
        assert_eq!(
            err.to_string(),
            "the key has a keycreate operation in progress; wait for it to end"
        );
    }
}
