//! A token opened as a partition: pooled, logged-in sessions and the object calls.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism as CkMechanism;
use cryptoki::object::Attribute as CkAttribute;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use luna_domain::{Algorithm, Attribute, ObjectType};
use secrecy::SecretString;

use crate::error::{call, Result, TokenError};
use crate::module::Module;
use crate::object::{self, ObjectDescription, ObjectRef};
use crate::pool::{PooledSession, SessionPool};
use crate::{mechanisms, templates};
use crate::{GenerateRequest, Generated, Portable, ScanOutcome, Token, TokenInfo, TransportOffer};

/// What `scan_with` calls for each batch, on the scan's own session.
type BatchVisitor<'a> = dyn FnMut(&Session, &[ObjectRef]) -> Result<ControlFlow<()>> + 'a;

/// A token of a module, used as a partition. Each call takes one session from
/// the pool, so a worker holds exactly one session at a time.
#[derive(Debug)]
pub struct Pkcs11Token {
    module: Arc<Module>,
    slot: Slot,
    info: TokenInfo,
    pin: SecretString,
    sessions: SessionPool,
    /// Domain key handles by peer serial: a lookup walks every object on
    /// SoftHSM2, and a replication moves many keys under the same one.
    domain_keys: Mutex<std::collections::HashMap<String, ObjectRef>>,
    /// On modules that need it (see `Module`): object writes hold it
    /// exclusively, everything else shared, so no call runs beside a write.
    object_writes: RwLock<()>,
}

impl Pkcs11Token {
    pub(crate) fn open(module: Arc<Module>, slot: Slot, info: TokenInfo, pin: SecretString) -> Result<Self> {
        // Proves the PIN now rather than at the first key operation.
        let session = module
            .context
            .open_rw_session(slot)
            .map_err(call("C_OpenSession"))?;
        module.login(&session, &info.label, &info.serial_number, &pin)?;
        let partition = Pkcs11Token {
            module,
            slot,
            info,
            pin,
            sessions: SessionPool::default(),
            object_writes: RwLock::new(()),
            domain_keys: Mutex::new(std::collections::HashMap::new()),
        };
        partition.sessions.put_back(session);
        Ok(partition)
    }

    fn session(&self) -> Result<PooledSession<'_>> {
        let session = match self.sessions.take() {
            Some(session) => session,
            None => {
                let session = self
                    .module
                    .context
                    .open_rw_session(self.slot)
                    .map_err(call("C_OpenSession"))?;
                // Login is per application and token: every later session shares it.
                match session.login(UserType::User, Some(&self.pin)) {
                    Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                    Err(other) => return Err(call("C_Login")(other)),
                }
                session
            }
        };
        Ok(self.sessions.lend(session))
    }

    /// Runs `work` on a pooled session, discarding the session if the error
    /// says it is no longer usable. Reads may run together; on SoftHSM2 none
    /// runs beside a write (see `writing`).
    fn with_session<T>(&self, work: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let _shared = self
            .module
            .serialize_object_writes
            .then(|| self.object_writes.read());
        self.on_session(work)
    }

    /// `with_session` for calls that create, change or destroy objects.
    /// SoftHSM2's file store fails a write (CKR_GENERAL_ERROR) when another
    /// session writes, or re-reads the token's objects, at the same time.
    fn writing<T>(&self, work: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let _exclusive = self
            .module
            .serialize_object_writes
            .then(|| self.object_writes.write());
        self.on_session(work)
    }

    fn on_session<T>(&self, work: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let session = self.session()?;
        match work(&session) {
            Err(error) if error.breaks_session() => {
                session.discard();
                Err(error)
            }
            result => result,
        }
    }

    fn scan_with(&self, batch_size: usize, visit: &mut BatchVisitor<'_>) -> Result<ScanOutcome> {
        let batch_size = NonZeroUsize::new(batch_size).unwrap_or(NonZeroUsize::MIN);
        self.with_session(|session| {
            let mut outcome = ScanOutcome::default();
            let template = [CkAttribute::Token(true)];
            let objects = session
                .iter_objects_with_cache_size(&template, batch_size)
                .map_err(call("C_FindObjectsInit"))?;
            let mut batch = Vec::with_capacity(batch_size.get());
            let mut objects = objects.peekable();
            while let Some(handle) = objects.next() {
                batch.push(ObjectRef::from(handle.map_err(call("C_FindObjects"))?));
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
    fn domain_key(&self, session: &Session, peer: &str) -> Result<ObjectRef> {
        if let Some(key) = self.domain_keys.lock().get(peer) {
            return Ok(*key);
        }
        let id = crate::domain::domain_key_id(&self.info.serial_number, peer);
        let key: ObjectRef = crate::domain::find_domain_key(session, &id)?
            .ok_or_else(|| TokenError::NoCloningDomain {
                from: self.info.label.clone(),
                to: peer.to_owned(),
            })?
            .into();
        self.domain_keys.lock().insert(peer.to_owned(), key);
        Ok(key)
    }

    /// Runs `work` with the domain key for `peer`; a kept handle that the
    /// token no longer knows (the domain was made again) is looked up afresh.
    fn with_domain_key<T>(
        &self,
        session: &Session,
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
        session: &Session,
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

    fn find_in(session: &Session, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        let handles = session
            .find_objects(&templates::find_template(cka_id))
            .map_err(call("C_FindObjects"))?;
        handles
            .into_iter()
            .map(|h| object::describe(session, h.into()))
            .collect()
    }
}

impl Token for Pkcs11Token {
    fn info(&self) -> &TokenInfo {
        &self.info
    }

    fn generate(&self, request: &GenerateRequest) -> Result<Generated> {
        let mechanism_used = self.info.generation_mechanism(request.mechanism, request.remap)?;
        let algorithm = request.mechanism.algorithm();
        let expected = request.mechanism.object_types();
        self.writing(|session| {
            if request.retry {
                if let Some(existing) = Self::existing(session, &request.cka_id, expected)? {
                    return Ok(Generated {
                        mechanism_used,
                        objects: existing,
                        created: false,
                    });
                }
            }
            let mechanism = mechanisms::ck_mechanism(mechanism_used);
            let objects = match algorithm {
                Algorithm::Aes => {
                    let template = templates::secret_key_template(request);
                    let handle = session
                        .generate_key(&mechanism, &template)
                        .map_err(call("C_GenerateKey"))?;
                    vec![object::describe(session, handle.into())?]
                }
                Algorithm::Rsa => {
                    let (public, private) = templates::rsa_templates(request);
                    let (public, private) = session
                        .generate_key_pair(&mechanism, &public, &private)
                        .map_err(call("C_GenerateKeyPair"))?;
                    vec![
                        object::describe(session, private.into())?,
                        object::describe(session, public.into())?,
                    ]
                }
            };
            Ok(Generated {
                mechanism_used,
                objects,
                created: true,
            })
        })
    }

    fn find_by_id(&self, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        self.with_session(|session| Self::find_in(session, cka_id))
    }

    fn describe(&self, object: ObjectRef) -> Result<ObjectDescription> {
        self.with_session(|session| object::describe(session, object))
    }

    fn describe_many(&self, objects: &[ObjectRef]) -> Result<Vec<ObjectDescription>> {
        self.with_session(|session| objects.iter().map(|o| object::describe(session, *o)).collect())
    }

    fn set_attributes(&self, object: ObjectRef, changes: &[(Attribute, bool)]) -> Result<()> {
        let template = templates::attribute_changes(changes);
        self.writing(|session| {
            session
                .update_attributes(object.handle(), &template)
                .map_err(call("C_SetAttributeValue"))
        })
    }

    fn destroy(&self, object: ObjectRef) -> Result<()> {
        self.writing(|session| {
            session
                .destroy_object(object.handle())
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
                private: private.into(),
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
                    .wrap_key(&CkMechanism::AesKeyWrapPad, key, object.handle.handle())
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
                    let key =
                        crate::domain::derive_transport_key(session, offer.private.handle(), point, false)?;
                    let made = session
                        .unwrap_key(&CkMechanism::AesKeyWrapPad, key, wrapped, &template)
                        .map_err(call("C_UnwrapKey"));
                    discard(session, key, "transport key");
                    made
                }
                _ => session.create_object(&template).map_err(call("C_CreateObject")),
            };
            // The ephemeral half is used once, whatever happened.
            discard(session, offer.private.handle(), "ephemeral private key");
            let handle = handle?;
            let mut made = object::describe(session, handle.into())?;
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
            let wrapped = self.with_domain_key(session, target_serial, |domain_key| {
                session
                    .wrap_key(
                        &CkMechanism::AesKeyWrapPad,
                        domain_key.handle(),
                        object.handle.handle(),
                    )
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
            let mut made = object::describe(session, handle.into())?;
            // SoftHSM2 neither takes CKA_VALUE_LEN in an unwrap template nor
            // sets it; AES key wrap keeps the length, so the source's stands.
            if made.size_bits == 0 {
                made.size_bits = portable.object.size_bits;
            }
            Ok(made)
        })
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
