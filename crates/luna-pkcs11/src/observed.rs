//! `Observed`: a token whose every call is reported to a `CallObserver`
//! (timed, its errors counted, listed in flight). The one place the `Token`
//! trait is delegated, beside the trait, so that a method added to the trait
//! is observed where it is added.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use luna_domain::Attribute;

use crate::{
    GcmSealed, GenerateRequest, Generated, ObjectDescription, ObjectRef, Portable, Reachability, Result,
    ScanOutcome, Token, TokenError, TokenInfo, TransportOffer,
};

/// Told of every call an `Observed` token makes, by the name of its `Token`
/// method (`export_for_offer` and `import_offered` report as `export` and
/// `import`: one figure per direction of travel).
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    /// A call of `function` begins on this thread.
    fn started(&self, function: &'static str);
    /// The call of `function` this thread began has ended after `elapsed`,
    /// with `error` if it failed (a `probe` reports none: what it found is
    /// its answer).
    fn ended(&self, function: &'static str, elapsed: Duration, error: Option<&TokenError>);
}

/// A token whose calls `observer` is told of; `info` and `reachability`
/// make no call and are not reported.
#[derive(Debug)]
pub struct Observed {
    inner: Arc<dyn Token>,
    observer: Arc<dyn CallObserver>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Token>, observer: Arc<dyn CallObserver>) -> Observed {
        Observed { inner, observer }
    }

    fn call<T>(&self, function: &'static str, call: impl FnOnce(&dyn Token) -> Result<T>) -> Result<T> {
        let started = Instant::now();
        self.observer.started(function);
        let result = call(self.inner.as_ref());
        self.observer
            .ended(function, started.elapsed(), result.as_ref().err());
        result
    }
}

impl Token for Observed {
    fn info(&self) -> &TokenInfo {
        self.inner.info()
    }
    fn reachability(&self) -> Reachability {
        self.inner.reachability()
    }
    fn probe(&self) -> Reachability {
        let started = Instant::now();
        self.observer.started("probe");
        let found = self.inner.probe();
        self.observer.ended("probe", started.elapsed(), None);
        found
    }
    fn generate(&self, request: &GenerateRequest) -> Result<Generated> {
        self.call("generate", |t| t.generate(request))
    }
    fn find_by_id(&self, cka_id: &[u8]) -> Result<Vec<ObjectDescription>> {
        self.call("find_by_id", |t| t.find_by_id(cka_id))
    }
    fn describe(&self, object: ObjectRef) -> Result<ObjectDescription> {
        self.call("describe", |t| t.describe(object))
    }
    fn describe_many(&self, objects: &[ObjectRef]) -> Result<Vec<ObjectDescription>> {
        self.call("describe_many", |t| t.describe_many(objects))
    }
    fn set_attributes(&self, object: ObjectRef, changes: &[(Attribute, bool)]) -> Result<()> {
        self.call("set_attributes", |t| t.set_attributes(object, changes))
    }
    fn destroy(&self, object: ObjectRef) -> Result<()> {
        self.call("destroy", |t| t.destroy(object))
    }
    fn encrypt_gcm(&self, key: ObjectRef, aad: &[u8], plaintext: &[u8]) -> Result<GcmSealed> {
        self.call("encrypt", |t| t.encrypt_gcm(key, aad, plaintext))
    }
    fn decrypt_gcm(&self, key: ObjectRef, aad: &[u8], sealed: &GcmSealed) -> Result<Vec<u8>> {
        self.call("decrypt", |t| t.decrypt_gcm(key, aad, sealed))
    }
    fn scan(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(&[ObjectRef]) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        self.call("scan", |t| t.scan(batch_size, visit))
    }
    fn scan_described(
        &self,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<ObjectDescription>) -> ControlFlow<()>,
    ) -> Result<ScanOutcome> {
        self.call("scan_described", |t| t.scan_described(batch_size, visit))
    }
    fn export_to(&self, object: &ObjectDescription, target_serial: &str) -> Result<Portable> {
        self.call("export", |t| t.export_to(object, target_serial))
    }
    fn import_from(&self, portable: &Portable, source_serial: &str) -> Result<ObjectDescription> {
        self.call("import", |t| t.import_from(portable, source_serial))
    }
    fn shares_domain_with(&self, peer_serial: &str) -> Result<bool> {
        self.call("shares_domain_with", |t| t.shares_domain_with(peer_serial))
    }
    fn offer_transport(&self) -> Result<TransportOffer> {
        self.call("offer_transport", |t| t.offer_transport())
    }
    fn export_for_offer(&self, object: &ObjectDescription, offer: &TransportOffer) -> Result<Portable> {
        self.call("export", |t| t.export_for_offer(object, offer))
    }
    fn import_offered(&self, portable: &Portable, offer: &TransportOffer) -> Result<ObjectDescription> {
        self.call("import", |t| t.import_offered(portable, offer))
    }
}
