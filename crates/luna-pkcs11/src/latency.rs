//! A token that only takes time (feature `testing`): every call sleeps a
//! fixed time per algorithm and any number run at once, as a network HSM
//! with many independent sessions would. The benchmark uses it to show what
//! the service does with a token much faster, or much more parallel, than
//! SoftHSM2; nothing is encrypted and no object leaves the process.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use luna_domain::{Algorithm, Attribute, ObjectType};
use parking_lot::Mutex;

use crate::object::{fingerprint, ObjectDescription, ObjectRef};
use crate::{
    GcmSealed, GenerateRequest, Generated, Portable, Reachability, Result, ScanOutcome, Token, TokenError,
    TokenInfo, TransportOffer,
};

/// See the module's page.
#[derive(Debug)]
pub struct LatencyToken {
    info: TokenInfo,
    aes: Duration,
    rsa: Duration,
    objects: Mutex<HashMap<Vec<u8>, Vec<ObjectDescription>>>,
    next_handle: AtomicU64,
}

impl LatencyToken {
    /// A token that says it is `info` and takes `aes` to make an AES key,
    /// `rsa` an RSA pair, and `aes` for any other call.
    pub fn new(info: TokenInfo, aes: Duration, rsa: Duration) -> LatencyToken {
        LatencyToken {
            info,
            aes,
            rsa,
            objects: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    fn describe_new(&self, request: &GenerateRequest, object_type: ObjectType) -> ObjectDescription {
        let algorithm = request.mechanism.algorithm();
        ObjectDescription {
            handle: ObjectRef::made_up(self.next_handle.fetch_add(1, Ordering::Relaxed)),
            object_type: Some(object_type),
            algorithm: Some(algorithm),
            label: request.label.clone(),
            cka_id: request.cka_id.clone(),
            size_bits: request.size,
            modulus: Vec::new(),
            public_exponent: if algorithm == Algorithm::Rsa { 65537 } else { 0 },
            attributes: request.attributes.for_object(object_type),
            wrap_with_trusted: request.wrap_with_trusted,
            trusted: false,
            fingerprint: fingerprint(None, None, &request.cka_id, &[], &[], request.label.as_bytes()),
        }
    }

    fn refused(&self, what: &str) -> TokenError {
        TokenError::MechanismUnsupported {
            token: self.info.label.clone(),
            mechanism: what.to_owned(),
            why: " (a latency-bound test token only makes and finds keys)".to_owned(),
        }
    }
}

impl Token for LatencyToken {
    fn info(&self) -> &TokenInfo {
        &self.info
    }

    fn reachability(&self) -> Reachability {
        Reachability::default()
    }

    fn probe(&self) -> Reachability {
        Reachability::default()
    }

    fn generate(&self, request: &GenerateRequest) -> Result<Generated> {
        let algorithm = request.mechanism.algorithm();
        std::thread::sleep(match algorithm {
            Algorithm::Aes => self.aes,
            Algorithm::Rsa => self.rsa,
        });
        let objects: Vec<ObjectDescription> = request
            .mechanism
            .object_types()
            .iter()
            .map(|t| self.describe_new(request, *t))
            .collect();
        self.objects
            .lock()
            .insert(request.cka_id.clone(), objects.clone());
        Ok(Generated {
            generated_with: request.mechanism,
            objects,
            created: true,
        })
    }

    fn find_by_id(&self, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        std::thread::sleep(self.aes);
        Ok(self.objects.lock().get(cka_id).cloned().unwrap_or_default())
    }

    fn describe(&self, object: ObjectRef) -> Result<ObjectDescription> {
        self.describe_many(&[object])?
            .pop()
            .ok_or(TokenError::StaleHandle { handle: object.raw() })
    }

    fn describe_many(&self, objects: &[ObjectRef]) -> Result<Vec<ObjectDescription>> {
        std::thread::sleep(self.aes);
        let all = self.objects.lock();
        Ok(all
            .values()
            .flatten()
            .filter(|d| objects.contains(&d.handle))
            .cloned()
            .collect())
    }

    fn set_attributes(&self, _object: ObjectRef, _changes: &[(Attribute, bool)]) -> Result<()> {
        Err(self.refused("C_SetAttributeValue"))
    }

    fn encrypt_gcm(&self, _key: ObjectRef, _aad: &[u8], _plaintext: &[u8]) -> Result<GcmSealed> {
        Err(self.refused("C_Encrypt"))
    }

    fn decrypt_gcm(&self, _key: ObjectRef, _aad: &[u8], _sealed: &GcmSealed) -> Result<Vec<u8>> {
        Err(self.refused("C_Decrypt"))
    }

    fn destroy(&self, object: ObjectRef) -> Result<()> {
        std::thread::sleep(self.aes);
        for objects in self.objects.lock().values_mut() {
            objects.retain(|d| d.handle != object);
        }
        Ok(())
    }

    fn scan(
        &self,
        _batch_size: usize,
        _visit: &mut dyn FnMut(&[ObjectRef]) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        Err(self.refused("C_FindObjects"))
    }

    fn scan_described(
        &self,
        _batch_size: usize,
        _visit: &mut dyn FnMut(Vec<ObjectDescription>) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        Err(self.refused("C_FindObjects"))
    }

    fn export_to(&self, _object: &ObjectDescription, _target_serial: &str) -> Result<Portable> {
        Err(self.refused("C_WrapKey"))
    }

    fn import_from(&self, _portable: &Portable, _source_serial: &str) -> Result<ObjectDescription> {
        Err(self.refused("C_UnwrapKey"))
    }

    fn shares_domain_with(&self, _peer_serial: &str) -> Result<bool> {
        Ok(false)
    }

    fn offer_transport(&self) -> Result<TransportOffer> {
        Err(self.refused("C_DeriveKey"))
    }

    fn export_for_offer(&self, _object: &ObjectDescription, _offer: &TransportOffer) -> Result<Portable> {
        Err(self.refused("C_WrapKey"))
    }

    fn import_offered(&self, _portable: &Portable, _offer: &TransportOffer) -> Result<ObjectDescription> {
        Err(self.refused("C_UnwrapKey"))
    }
}
