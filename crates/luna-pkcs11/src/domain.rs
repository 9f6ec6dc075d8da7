//! The cloning domain: one trusted AES-256 key per pair of members, agreed by
//! ECDH between the members' security officers, so that key material moves
//! between members only wrapped, never in clear.
//!
//! For each pair, each SO makes an ephemeral P-256 key pair (session
//! objects), the two sides exchange public points, and each derives the same
//! AES key with `CKM_ECDH1_DERIVE` as a token object marked `CKA_TRUSTED`
//! (which only an SO may set). Keys made with `CKA_WRAP_WITH_TRUSTED` can then
//! be wrapped by that key alone. The SO PIN is used for this and dropped.

use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism as CkMechanism;
use cryptoki::object::{Attribute as CkAttribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::error::{call, Result, TokenError};
use crate::mechanisms::narrow;
use crate::module::Module;
use luna_domain::Member;

/// The label of every domain key.
pub const DOMAIN_KEY_LABEL: &str = "luna-cckm cloning domain";

/// DER of the P-256 curve's OID (`CKA_EC_PARAMS`).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The `CKA_ID` of the key two members share: derived from their serials,
/// the same whichever side asks.
pub fn domain_key_id(a_serial: &str, b_serial: &str) -> Vec<u8> {
    let (x, y) = if a_serial <= b_serial {
        (a_serial, b_serial)
    } else {
        (b_serial, a_serial)
    };
    let mut hash = Sha256::new();
    hash.update(b"luna-cckm/cloning-domain/v1");
    hash.update(x.as_bytes());
    hash.update([0]);
    hash.update(y.as_bytes());
    hash.finalize()[..16].to_vec()
}

pub(crate) fn domain_key_template(id: &[u8]) -> Vec<CkAttribute> {
    vec![
        CkAttribute::Class(ObjectClass::SECRET_KEY),
        CkAttribute::Token(true),
        CkAttribute::Id(id.to_vec()),
        CkAttribute::Trusted(true),
    ]
}

/// The domain key with this id on the session's token, if there is one.
pub(crate) fn find_domain_key(session: &Session, id: &[u8]) -> Result<Option<ObjectHandle>> {
    Ok(session
        .find_objects(&domain_key_template(id))
        .map_err(call("C_FindObjects"))?
        .into_iter()
        .next())
}

/// A P-256 point as raw octets (SoftHSM2 reports `CKA_EC_POINT` DER-wrapped).
fn raw_point(point: &[u8]) -> &[u8] {
    match point {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        other => other,
    }
}

impl Module {
    /// Establishes the cloning domain among the given tokens, pairwise. Tokens
    /// that already share a domain key keep it; a key found on one side only
    /// is replaced. Needs the SO PIN, and no user logged in to these tokens
    /// in this process (PKCS#11 allows one user type per token at a time).
    pub fn establish_cloning_domain(&self, members: &[Member], so_pin: &SecretString) -> Result<()> {
        let _call = self.enter();
        let mut sessions = Vec::with_capacity(members.len());
        for member in members {
            let (slot, _) = self.find_slot(&member.partition_label, Some(&member.serial_number))?;
            let session = self.open_session(slot)?;
            match self.login_as(&session, UserType::So, so_pin) {
                Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CryptokiError::Pkcs11(RvError::UserAnotherAlreadyLoggedIn, _)) => {
                    return Err(TokenError::UserSessionOpen {
                        label: member.partition_label.clone(),
                    })
                }
                Err(other) => return Err(call("C_Login")(other)),
            }
            sessions.push(session);
        }
        let outcome = (|| {
            for a in 0..members.len() {
                for b in a + 1..members.len() {
                    agree(&sessions[a], &members[a], &sessions[b], &members[b])?;
                }
            }
            Ok(())
        })();
        for session in &sessions {
            let _ = session.logout();
        }
        outcome
    }
}

fn agree(sa: &Session, a: &Member, sb: &Session, b: &Member) -> Result<()> {
    let id = domain_key_id(&a.serial_number, &b.serial_number);
    let (on_a, on_b) = (find_domain_key(sa, &id)?, find_domain_key(sb, &id)?);
    if on_a.is_some() && on_b.is_some() {
        return Ok(());
    }
    for (session, stale) in [(sa, on_a), (sb, on_b)] {
        if let Some(handle) = stale {
            session.destroy_object(handle).map_err(call("C_DestroyObject"))?;
        }
    }
    let (a_public, a_private) = ephemeral_pair(sa)?;
    let (b_public, b_private) = ephemeral_pair(sb)?;
    let a_point = ec_point(sa, a_public)?;
    let b_point = ec_point(sb, b_public)?;
    derive(sa, a_private, &b_point, &id)?;
    derive(sb, b_private, &a_point, &id)?;
    Ok(())
}

/// A P-256 pair as session objects: gone when the session closes.
pub(crate) fn ephemeral_pair(session: &Session) -> Result<(ObjectHandle, ObjectHandle)> {
    let public = [
        CkAttribute::Token(false),
        CkAttribute::Private(false),
        CkAttribute::EcParams(P256.to_vec()),
    ];
    let private = [
        CkAttribute::Token(false),
        CkAttribute::Private(false),
        CkAttribute::Sensitive(true),
        CkAttribute::Extractable(false),
        CkAttribute::Derive(true),
    ];
    session
        .generate_key_pair(&CkMechanism::EccKeyPairGen, &public, &private)
        .map_err(call("C_GenerateKeyPair"))
}

pub(crate) fn ec_point(session: &Session, public: ObjectHandle) -> Result<Vec<u8>> {
    let values = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(call("C_GetAttributeValue"))?;
    values
        .into_iter()
        .find_map(|v| match v {
            CkAttribute::EcPoint(point) => Some(raw_point(&point).to_vec()),
            _ => None,
        })
        .ok_or(TokenError::MalformedObject {
            handle: crate::mechanisms::widen(public.handle()),
            attribute: "CKA_EC_POINT",
            problem: "absent".into(),
        })
}

fn derive(session: &Session, private: ObjectHandle, other_point: &[u8], id: &[u8]) -> Result<ObjectHandle> {
    let mechanism = CkMechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), other_point));
    let template = [
        CkAttribute::Class(ObjectClass::SECRET_KEY),
        CkAttribute::KeyType(KeyType::AES),
        CkAttribute::ValueLen(narrow(32).into()),
        CkAttribute::Token(true),
        // The SO can only make public objects; the key is sensitive and never leaves.
        CkAttribute::Private(false),
        CkAttribute::Sensitive(true),
        CkAttribute::Extractable(false),
        CkAttribute::Trusted(true),
        CkAttribute::Wrap(true),
        CkAttribute::Unwrap(true),
        CkAttribute::Encrypt(false),
        CkAttribute::Decrypt(false),
        CkAttribute::Label(DOMAIN_KEY_LABEL.as_bytes().to_vec()),
        CkAttribute::Id(id.to_vec()),
        // Last: SoftHSM2 refuses every attribute a derive template sets after
        // CKA_MODIFIABLE false (they count as changes to an unmodifiable object).
        CkAttribute::Modifiable(false),
    ];
    session
        .derive_key(&mechanism, private, &template)
        .map_err(call("C_DeriveKey"))
}

/// The AES key an ephemeral agreement gives one side: a session object that
/// can only wrap (sender) or unwrap (receiver), never leaves the token, and is
/// not trusted, so it cannot wrap a `CKA_WRAP_WITH_TRUSTED` key.
pub(crate) fn derive_transport_key(
    session: &Session,
    private: ObjectHandle,
    other_point: &[u8],
    sender: bool,
) -> Result<ObjectHandle> {
    let mechanism = CkMechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), other_point));
    let template = [
        CkAttribute::Class(ObjectClass::SECRET_KEY),
        CkAttribute::KeyType(KeyType::AES),
        CkAttribute::ValueLen(narrow(32).into()),
        CkAttribute::Token(false),
        CkAttribute::Sensitive(true),
        CkAttribute::Extractable(false),
        CkAttribute::Wrap(sender),
        CkAttribute::Unwrap(!sender),
        CkAttribute::Encrypt(false),
        CkAttribute::Decrypt(false),
    ];
    session
        .derive_key(&mechanism, private, &template)
        .map_err(call("C_DeriveKey"))
}
