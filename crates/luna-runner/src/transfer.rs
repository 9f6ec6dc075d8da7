//! How a key object travels between two member tokens: the transfer policy.

use luna_pkcs11::ObjectDescription;

/// Why a key object did not reach a member: the member's state in
/// `replication_info`, or a synchronize job's problem, says it as a sentence.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferRefused {
    /// This instance could not have the member's token (away, not listed
    /// here, its PIN refused).
    #[error("{0}")]
    NoToken(String),
    /// A member's module lacks a mechanism replication needs.
    #[error("{0}")]
    Unreplicable(String),
    /// Nothing lets the key travel: it is not extractable, and the members
    /// share no cloning domain.
    #[error(
        "the key is not extractable, and the members share no cloning domain to clone it within \
         (register the connection with so_password)"
    )]
    NotExtractable,
    /// A token call failed.
    #[error(transparent)]
    Token(#[from] luna_pkcs11::TokenError),
}

impl From<crate::failure::Failure> for TransferRefused {
    fn from(failure: crate::failure::Failure) -> TransferRefused {
        TransferRefused::NoToken(failure.reason().to_owned())
    }
}

/// Moves one key object from `source` to `target`, never in clear: within a
/// cloning domain under the pair's trusted key; without one, an extractable
/// key under a key the two members agree for this transfer; a public key as
/// its public attributes. Says why when none applies.
pub(crate) fn transfer(
    source: &dyn luna_pkcs11::Token,
    source_serial: &str,
    target: &dyn luna_pkcs11::Token,
    target_serial: &str,
    object: &ObjectDescription,
) -> Result<(), TransferRefused> {
    if object.object_type != Some(luna_domain::ObjectType::PublicKey) {
        // Registration refuses such members; a module changed since is named here.
        if let Some(reason) = [source, target].iter().find_map(|t| t.info().cannot_replicate()) {
            return Err(TransferRefused::Unreplicable(reason));
        }
    }
    let in_domain = source.shares_domain_with(target_serial)?;
    let copied = if in_domain || object.object_type == Some(luna_domain::ObjectType::PublicKey) {
        source
            .export_to(object, target_serial)
            .and_then(|portable| target.import_from(&portable, source_serial))
    } else if object.attributes.contains(luna_domain::Attribute::Extractable) && !object.wrap_with_trusted {
        target.offer_transport().and_then(|offer| {
            let portable = source.export_for_offer(object, &offer)?;
            target.import_offered(&portable, &offer)
        })
    } else {
        return Err(TransferRefused::NotExtractable);
    };
    copied.map(drop).map_err(TransferRefused::from)
}
