//! An opened token: pooled, logged-in sessions and the object calls.

use std::num::NonZeroUsize;
use std::ops::{ControlFlow, Deref};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cryptoki::context::Function;
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism as CkMechanism;
use cryptoki::object::Attribute as CkAttribute;
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;
use luna_domain::{Algorithm, Attribute, ObjectType};
use secrecy::SecretString;

use crate::error::{call, Result, TokenError};
use crate::health::{Health, Reachability};
use crate::module::Module;
use crate::object::{self, ObjectDescription, ObjectRef};
use crate::pool::{ModuleSession, PooledSession, SessionPool};
use crate::{mechanisms, templates};
use crate::{GenerateRequest, Generated, Portable, ScanOutcome, Token, TokenInfo, TransportOffer};

mod calls;
mod gcm;

pub use gcm::{GcmSealed, GCM_IV_BYTES, GCM_TAG_BYTES};

/// What `scan_with` calls for each batch, on the scan's own session.
type BatchVisitor<'a> = dyn FnMut(&OnSession<'_>, &[ObjectRef]) -> Result<ControlFlow<()>> + 'a;

/// A token of a module, opened. Each call takes one session from
/// the pool, so a worker holds exactly one session at a time.
///
/// A call that fails in a way that may mean the token or its sessions are
/// gone (`TokenError::signals_absence`) drops the token's idle sessions and
/// checks the token with a fresh session and login: if it answers, the call's
/// error stands (and a call refused for its session, or a read, runs once
/// more); if not, the token is away, and later calls fail at once with
/// `TokenError::Away` until a look (`Token::probe`, or a call every
/// `PROBE_AWAY_EVERY`) finds it back. When looks keep failing, the module is
/// re-initialised (`Module::reinitialise_if_due`): SoftHSM2 keeps a token
/// whose store went away invalid until `C_Initialize` runs again.
#[derive(Debug)]
pub struct Pkcs11Token {
    module: Arc<Module>,
    /// The token's slot, found again after a re-initialisation (a module may
    /// number its slots anew), in the module generation `slot_generation`.
    slot: Mutex<Slot>,
    slot_generation: AtomicU64,
    info: TokenInfo,
    pin: SecretString,
    /// Shared with the module, which closes them before it re-initialises.
    sessions: Arc<SessionPool>,
    /// Domain key handles by peer serial: a lookup walks every object on
    /// SoftHSM2, and a replication moves many keys under the same one.
    domain_keys: Mutex<std::collections::HashMap<String, ObjectRef>>,
    /// On modules that need it (see `Module`): object writes hold it
    /// exclusively, everything else shared, so no call runs beside a write.
    object_writes: RwLock<()>,
    health: Health,
}

/// One call's session and the module generation it runs in: handles it
/// issues carry that generation, and handles it is given must be of it.
pub(crate) struct OnSession<'a> {
    session: &'a Session,
    generation: u64,
}

impl Deref for OnSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        self.session
    }
}

impl OnSession<'_> {
    /// A handle the module just gave, as the service keeps it.
    pub(crate) fn issue(&self, handle: cryptoki::object::ObjectHandle) -> ObjectRef {
        ObjectRef::issued(handle, self.generation)
    }

    /// `object`, if it was issued in this generation of the module.
    pub(crate) fn current(&self, object: ObjectRef) -> Result<ObjectRef> {
        object.current(self.generation)
    }
}

/// What a call may do again, on a fresh session, after an error that may
/// mean the token's sessions are gone and a check finds the token answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// A read: always (it changes nothing).
    Read,
    /// A write: only if it was refused for its session, before it did anything.
    Write,
    /// A scan: never (its visitor has seen batches the caller keeps).
    Never,
}

impl Pkcs11Token {
    pub(crate) fn open(module: Arc<Module>, slot: Slot, info: TokenInfo, pin: SecretString) -> Result<Self> {
        let _call = module.enter();
        // Proves the PIN now rather than at the first key operation.
        let session = module.open_session(slot)?;
        module.login(&session, &info.label, &info.serial_number, &pin)?;
        let sessions = Arc::new(SessionPool::default());
        module.track(&sessions);
        let token = Pkcs11Token {
            slot_generation: AtomicU64::new(module.generation()),
            module: Arc::clone(&module),
            slot: Mutex::new(slot),
            info,
            pin,
            sessions,
            object_writes: RwLock::new(()),
            domain_keys: Mutex::new(std::collections::HashMap::new()),
            health: Health::default(),
        };
        token.sessions.put_back(session);
        Ok(token)
    }

    fn scan_with(&self, batch_size: usize, visit: &mut BatchVisitor<'_>) -> Result<ScanOutcome> {
        let batch_size = NonZeroUsize::new(batch_size).unwrap_or(NonZeroUsize::MIN);
        self.call(false, Again::Never, |session| {
            let mut outcome = ScanOutcome::default();
            let template = [CkAttribute::Token(true)];
            let objects = session
                .iter_objects_with_cache_size(&template, batch_size)
                .map_err(call("C_FindObjectsInit"))?;
            let mut batch = Vec::with_capacity(batch_size.get());
            let mut objects = objects.peekable();
            while let Some(handle) = objects.next() {
                batch.push(session.issue(handle.map_err(call("C_FindObjects"))?));
                if batch.len() == batch_size.get() || objects.peek().is_none() {
                    outcome.seen += batch.len();
                    outcome.batches += 1;
                    let flow = visit(session, &batch)?;
                    batch.clear();
                    if flow.is_break() {
                        outcome.stopped = true;
                        break;
                    }
                }
            }
            Ok(outcome)
        })
    }

    /// The domain key this token shares with `peer`, found once and kept.
    /// A handle kept from an earlier generation of the module is looked up again.
    fn domain_key(&self, session: &OnSession<'_>, peer: &str) -> Result<ObjectRef> {
        if let Some(key) = self.domain_keys.lock().get(peer) {
            if let Ok(key) = session.current(*key) {
                return Ok(key);
            }
        }
        let id = crate::domain::domain_key_id(&self.info.serial_number, peer);
        let key =
            crate::domain::find_domain_key(session, &id)?.ok_or_else(|| TokenError::NoCloningDomain {
                from: self.info.label.clone(),
                to: peer.to_owned(),
            })?;
        let key = session.issue(key);
        self.domain_keys.lock().insert(peer.to_owned(), key);
        Ok(key)
    }

    /// Runs `work` with the domain key for `peer`; a kept handle that the
    /// token no longer knows (the domain was made again) is looked up afresh.
    fn with_domain_key<T>(
        &self,
        session: &OnSession<'_>,
        peer: &str,
        work: impl Fn(ObjectRef) -> Result<T>,
    ) -> Result<T> {
        let key = self.domain_key(session, peer)?;
        match work(key) {
            Err(e)
                if matches!(
                    e.rv(),
                    Some(
                        RvError::KeyHandleInvalid
                            | RvError::ObjectHandleInvalid
                            | RvError::WrappingKeyHandleInvalid
                            | RvError::UnwrappingKeyHandleInvalid
                    )
                ) =>
            {
                self.domain_keys.lock().remove(peer);
                work(self.domain_key(session, peer)?)
            }
            other => other,
        }
    }

    /// What an earlier attempt left under `cka_id`: the whole key (in
    /// `expected` order), or nothing. Half a pair is destroyed: SoftHSM2
    /// writes the halves of a pair one after the other, so a crash between
    /// them leaves one behind, and the `CKA_ID` (the record's own new UUID)
    /// says it is ours. The caller then makes the pair again.
    fn existing(
        session: &OnSession<'_>,
        cka_id: &[u8],
        expected: &[ObjectType],
    ) -> Result<Option<Vec<ObjectDescription>>> {
        let mut found: Vec<ObjectDescription> = Self::find_in(session, cka_id)?
            .into_iter()
            .filter(|d| d.object_type.is_some_and(|t| expected.contains(&t)))
            .collect();
        found.sort_by_key(|d| expected.iter().position(|t| Some(*t) == d.object_type));
        found.dedup_by_key(|d| d.object_type);
        if found.len() == expected.len() {
            return Ok(Some(found));
        }
        for half in &found {
            tracing::warn!(cka_id = %hex::encode(cka_id), "removing half a key pair an interrupted create left");
            session
                .destroy_object(half.handle.handle())
                .map_err(call("C_DestroyObject"))?;
        }
        Ok(None)
    }

    fn find_in(session: &OnSession<'_>, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        let handles = session
            .find_objects(&templates::find_template(cka_id))
            .map_err(call("C_FindObjects"))?;
        handles
            .into_iter()
            .map(|h| object::describe(session, session.issue(h)))
            .collect()
    }
}

impl Token for Pkcs11Token {
    fn info(&self) -> &TokenInfo {
        &self.info
    }

    fn reachability(&self) -> Reachability {
        self.health.snapshot()
    }

    fn probe(&self) -> Reachability {
        let mut checked = self.check();
        if checked.is_err() {
            self.drop_sessions();
            // The module may be keeping stale state (SoftHSM2 keeps a token
            // whose store went away invalid until it is initialised again).
            if self.module.reinitialise_if_due() {
                checked = self.check();
            }
        }
        match checked {
            Ok(()) => {
                if self.health.answered() {
                    self.module.recovered();
                    tracing::warn!(token = %self.info.label, serial = %self.info.serial_number,
                        "the token is reachable again; its work resumes");
                }
            }
            Err(look) => {
                self.went_away(look.to_string());
            }
        }
        self.health.snapshot()
    }

    fn generate(&self, request: &GenerateRequest) -> Result<Generated> {
        let generated_with = self.info.generated_with(request.mechanism, request.remap)?;
        let algorithm = request.mechanism.algorithm();
        let expected = request.mechanism.object_types();
        self.writing(|session| {
            if request.retry {
                if let Some(existing) = Self::existing(session, &request.cka_id, expected)? {
                    return Ok(Generated {
                        generated_with,
                        objects: existing,
                        created: false,
                    });
                }
            }
            let mechanism = mechanisms::ck_mechanism(generated_with);
            let objects = match algorithm {
                Algorithm::Aes => {
                    let template = templates::secret_key_template(request);
                    let handle = session
                        .generate_key(&mechanism, &template)
                        .map_err(call("C_GenerateKey"))?;
                    vec![object::describe(session, session.issue(handle))?]
                }
                Algorithm::Rsa => {
                    let (public, private) = templates::rsa_templates(request);
                    let (public, private) = session
                        .generate_key_pair(&mechanism, &public, &private)
                        .map_err(call("C_GenerateKeyPair"))?;
                    vec![
                        object::describe(session, session.issue(private))?,
                        object::describe(session, session.issue(public))?,
                    ]
                }
            };
            Ok(Generated {
                generated_with,
                objects,
                created: true,
            })
        })
    }

    fn find_by_id(&self, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        self.with_session(|session| Self::find_in(session, cka_id))
    }

    fn describe(&self, object: ObjectRef) -> Result<ObjectDescription> {
        self.with_session(|session| object::describe(session, session.current(object)?))
    }

    fn describe_many(&self, objects: &[ObjectRef]) -> Result<Vec<ObjectDescription>> {
        self.with_session(|session| {
            objects
                .iter()
                .map(|o| object::describe(session, session.current(*o)?))
                .collect()
        })
    }

    fn set_attributes(&self, object: ObjectRef, changes: &[(Attribute, bool)]) -> Result<()> {
        let template = templates::attribute_changes(changes);
        self.writing(|session| {
            session
                .update_attributes(session.current(object)?.handle(), &template)
                .map_err(call("C_SetAttributeValue"))
        })
    }

    fn encrypt_gcm(&self, key: ObjectRef, aad: &[u8], plaintext: &[u8]) -> Result<GcmSealed> {
        self.with_session(|session| gcm::encrypt(&self.info.label, session, key, aad, plaintext))
    }

    fn decrypt_gcm(&self, key: ObjectRef, aad: &[u8], sealed: &GcmSealed) -> Result<Vec<u8>> {
        self.with_session(|session| gcm::decrypt(&self.info.label, session, key, aad, sealed))
    }

    fn destroy(&self, object: ObjectRef) -> Result<()> {
        self.writing(|session| {
            session
                .destroy_object(session.current(object)?.handle())
                .map_err(call("C_DestroyObject"))
        })
    }

    fn shares_domain_with(&self, peer_serial: &str) -> Result<bool> {
        self.with_session(|session| match self.domain_key(session, peer_serial) {
            Ok(_) => Ok(true),
            Err(TokenError::NoCloningDomain { .. }) => Ok(false),
            Err(other) => Err(other),
        })
    }

    fn offer_transport(&self) -> Result<TransportOffer> {
        self.writing(|session| {
            let (public, private) = crate::domain::ephemeral_pair(session)?;
            let point = crate::domain::ec_point(session, public)?;
            session.destroy_object(public).map_err(call("C_DestroyObject"))?;
            Ok(TransportOffer {
                point,
                private: session.issue(private),
            })
        })
    }

    fn export_for_offer(&self, object: &ObjectDescription, offer: &TransportOffer) -> Result<Portable> {
        if object.object_type == Some(ObjectType::PublicKey) {
            return self.export_to(object, "");
        }
        self.writing(|session| {
            let (public, private) = crate::domain::ephemeral_pair(session)?;
            let sender_point = crate::domain::ec_point(session, public)?;
            let transport = crate::domain::derive_transport_key(session, private, &offer.point, true);
            let wrapped = transport.and_then(|key| {
                let wrapped = session
                    .wrap_key(
                        &CkMechanism::AesKeyWrapPad,
                        key,
                        session.current(object.handle)?.handle(),
                    )
                    .map_err(call("C_WrapKey"));
                discard(session, key, "transport key");
                wrapped
            });
            discard(session, public, "ephemeral public key");
            discard(session, private, "ephemeral private key");
            Ok(Portable {
                object: object.clone(),
                wrapped: Some(wrapped?),
                sender_point: Some(sender_point),
            })
        })
    }

    fn import_offered(&self, portable: &Portable, offer: &TransportOffer) -> Result<ObjectDescription> {
        let template = templates::import_template(&portable.object)?;
        self.writing(|session| {
            let handle = match (&portable.wrapped, &portable.sender_point) {
                (Some(wrapped), Some(point)) => {
                    let private = session.current(offer.private)?.handle();
                    let key = crate::domain::derive_transport_key(session, private, point, false)?;
                    let made = session
                        .unwrap_key(&CkMechanism::AesKeyWrapPad, key, wrapped, &template)
                        .map_err(call("C_UnwrapKey"));
                    discard(session, key, "transport key");
                    made
                }
                _ => session.create_object(&template).map_err(call("C_CreateObject")),
            };
            // The ephemeral half is used once, whatever happened.
            if let Ok(private) = session.current(offer.private) {
                discard(session, private.handle(), "ephemeral private key");
            }
            let handle = handle?;
            let mut made = object::describe(session, session.issue(handle))?;
            if made.size_bits == 0 {
                made.size_bits = portable.object.size_bits;
            }
            Ok(made)
        })
    }

    fn scan(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(&[ObjectRef]) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        self.scan_with(batch_size, &mut |_, batch| Ok(visit(batch)))
    }

    fn scan_described(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<ObjectDescription>) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        self.scan_with(batch_size, &mut |session, batch| {
            let described = batch
                .iter()
                .map(|o| object::describe(session, *o))
                .collect::<Result<Vec<_>>>()?;
            Ok(visit(described))
        })
    }

    fn export_to(&self, object: &ObjectDescription, target_serial: &str) -> Result<Portable> {
        if object.object_type == Some(ObjectType::PublicKey) {
            return Ok(Portable {
                object: object.clone(),
                wrapped: None,
                sender_point: None,
            });
        }
        self.with_session(|session| {
            let source = session.current(object.handle)?;
            let wrapped = self.with_domain_key(session, target_serial, |domain_key| {
                session
                    .wrap_key(&CkMechanism::AesKeyWrapPad, domain_key.handle(), source.handle())
                    .map_err(call("C_WrapKey"))
            })?;
            Ok(Portable {
                object: object.clone(),
                wrapped: Some(wrapped),
                sender_point: None,
            })
        })
    }

    fn import_from(&self, portable: &Portable, source_serial: &str) -> Result<ObjectDescription> {
        let template = templates::import_template(&portable.object)?;
        self.writing(|session| {
            let handle = match &portable.wrapped {
                None => session.create_object(&template).map_err(call("C_CreateObject"))?,
                Some(wrapped) => self.with_domain_key(session, source_serial, |domain_key| {
                    session
                        .unwrap_key(
                            &CkMechanism::AesKeyWrapPad,
                            domain_key.handle(),
                            wrapped,
                            &template,
                        )
                        .map_err(call("C_UnwrapKey"))
                })?,
            };
            let mut made = object::describe(session, session.issue(handle))?;
            // SoftHSM2 neither takes CKA_VALUE_LEN in an unwrap template nor
            // sets it; AES key wrap keeps the length, so the source's stands.
            if made.size_bits == 0 {
                made.size_bits = portable.object.size_bits;
            }
            Ok(made)
        })
    }
}

/// Whether `session` is logged in as the user; `CKR_USER_NOT_LOGGED_IN`
/// if not (a login lost behind the service's back: the partition restarted,
/// another program logged the application out).
fn logged_in(session: &Session) -> Result<()> {
    let info = session.get_session_info().map_err(call("C_GetSessionInfo"))?;
    match info.session_state() {
        SessionState::RoUser | SessionState::RwUser => Ok(()),
        SessionState::RoPublic | SessionState::RwPublic | SessionState::RwSecurityOfficer => Err(call(
            "C_GetSessionInfo",
        )(
            CryptokiError::Pkcs11(RvError::UserNotLoggedIn, Function::GetSessionInfo),
        )),
    }
}

/// Destroys a key made for one transfer. A failure is logged, not returned:
/// the transfer's outcome stands either way, but the operator should know the
/// object may be left on the token (a session object goes when its session
/// closes; a module that made it a token object keeps it).
fn discard(session: &Session, handle: cryptoki::object::ObjectHandle, what: &'static str) {
    if let Err(error) = session.destroy_object(handle) {
        tracing::warn!(%error, what, "a key made for a transfer could not be destroyed; it may be left on the token");
    }
}
