//! AES-GCM through a secret key on the token (`CKM_AES_GCM`): a 12-byte IV
//! the token draws (`C_GenerateRandom`), a 128-bit tag, the caller's
//! additional authenticated data. The module answers ciphertext and tag
//! together; they are handed back apart.

use cryptoki::mechanism::aead::GcmParams;

use super::*;

/// The IV a GCM encryption draws, in bytes.
pub const GCM_IV_BYTES: usize = 12;
/// The tag a GCM encryption answers, in bytes.
pub const GCM_TAG_BYTES: usize = 16;
/// The same, in bits, as `CK_GCM_PARAMS` takes it.
const TAG_BITS: u64 = GCM_TAG_BYTES as u64 * 8;

/// What an AES-GCM encryption made.
#[derive(Clone, PartialEq, Eq)]
pub struct GcmSealed {
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub tag: Vec<u8>,
}

impl std::fmt::Debug for GcmSealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmSealed({} bytes)", self.ciphertext.len())
    }
}

/// A refusal the caller tells apart: the token has no AES-GCM, the key may
/// not be used so, or what was to be decrypted does not authenticate.
fn refusal<'a>(
    token: &'a str,
    function: &'static str,
    key: ObjectRef,
) -> impl FnOnce(CryptokiError) -> TokenError + 'a {
    move |source| match &source {
        CryptokiError::Pkcs11(RvError::MechanismInvalid, _) => TokenError::MechanismUnsupported {
            token: token.to_owned(),
            mechanism: "CKM_AES_GCM".to_owned(),
            why: String::new(),
        },
        CryptokiError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => TokenError::KeyUseNotPermitted {
            handle: key.raw(),
            function,
        },
        CryptokiError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)
            if function == "C_Decrypt" =>
        {
            TokenError::NotAuthentic
        }
        _ => call(function)(source),
    }
}

pub(super) fn encrypt(
    token: &str,
    session: &OnSession<'_>,
    key: ObjectRef,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<GcmSealed> {
    let handle = session.current(key)?.handle();
    let mut iv = session
        .generate_random_vec(GCM_IV_BYTES as u32)
        .map_err(call("C_GenerateRandom"))?;
    let drawn = iv.clone();
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(call("C_EncryptInit"))?;
    let mut sealed = session
        .encrypt(&CkMechanism::AesGcm(params), handle, plaintext)
        .map_err(refusal(token, "C_Encrypt", key))?;
    if sealed.len() != plaintext.len() + GCM_TAG_BYTES {
        return Err(TokenError::MalformedObject {
            handle: key.raw(),
            attribute: "AES-GCM output",
            problem: format!(
                "{} bytes for {} of plaintext; expected the ciphertext and a {GCM_TAG_BYTES}-byte tag",
                sealed.len(),
                plaintext.len()
            ),
        });
    }
    let tag = sealed.split_off(plaintext.len());
    Ok(GcmSealed {
        iv: drawn,
        ciphertext: sealed,
        tag,
    })
}

pub(super) fn decrypt(
    token: &str,
    session: &OnSession<'_>,
    key: ObjectRef,
    aad: &[u8],
    sealed: &GcmSealed,
) -> Result<Vec<u8>> {
    let handle = session.current(key)?.handle();
    let mut iv = sealed.iv.clone();
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(call("C_DecryptInit"))?;
    let mut input = Vec::with_capacity(sealed.ciphertext.len() + sealed.tag.len());
    input.extend_from_slice(&sealed.ciphertext);
    input.extend_from_slice(&sealed.tag);
    match session.decrypt(&CkMechanism::AesGcm(params), handle, &input) {
        Ok(plaintext) => Ok(plaintext),
        // SoftHSM2 answers a tag that does not match with CKR_GENERAL_ERROR,
        // which also means a token gone: the key read back tells which.
        Err(CryptokiError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _))
            if session
                .get_attributes(handle, &[cryptoki::object::AttributeType::KeyType])
                .is_ok() =>
        {
            Err(TokenError::NotAuthentic)
        }
        Err(other) => Err(refusal(token, "C_Decrypt", key)(other)),
    }
}
