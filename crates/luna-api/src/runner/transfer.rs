//! How a key object travels between two member tokens: the transfer policy.

use luna_pkcs11::ObjectDescription;

/// Moves one key object from `source` to `target`, never in clear: within a
/// cloning domain under the pair's trusted key; without one, an extractable
/// key under a key the two members agree for this transfer; a public key as
/// its public attributes. Says why when none applies.
pub(super) fn transfer(
    source: &dyn luna_pkcs11::Token,
    source_serial: &str,
    target: &dyn luna_pkcs11::Token,
    target_serial: &str,
    object: &ObjectDescription,
) -> Result<(), String> {
    if object.object_type != Some(luna_domain::ObjectType::PublicKey) {
        // Registration refuses such members; a module changed since is named here.
        if let Some(reason) = [source, target].iter().find_map(|t| t.info().cannot_replicate()) {
            return Err(reason);
        }
    }
    let in_domain = source
        .shares_domain_with(target_serial)
        .map_err(|e| e.to_string())?;
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
        return Err(
            "the key is not extractable, and the members share no cloning domain to clone it within \
             (register the connection with so_password)"
                .into(),
        );
    };
    copied.map(drop).map_err(|e| e.to_string())
}
