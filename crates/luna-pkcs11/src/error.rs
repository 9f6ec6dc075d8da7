//! `TokenError`, the crate's one error enum, and what callers may ask of a
//! failure; the cryptoki error behind a failed call stays inside the crate
//! (`Pkcs11Failure`).

use std::path::PathBuf;
use std::time::SystemTime;

use cryptoki::error::{Error as CryptokiError, RvError};
use thiserror::Error;

/// Everything a token can refuse, typed, with the PKCS#11 function that failed.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("the PKCS#11 module {} could not be loaded", path.display())]
    LoadModule {
        path: PathBuf,
        #[source]
        source: Pkcs11Failure,
    },
    /// A PKCS#11 call returned an error. `code` is the `CKR_…` name.
    #[error("{function} returned {code}")]
    Call {
        function: String,
        code: String,
        #[source]
        source: Pkcs11Failure,
    },
    #[error("no token labelled {label:?}{} is present in the PKCS#11 module", serial.as_ref().map(|s| format!(" with serial number {s}")).unwrap_or_default())]
    TokenNotFound { label: String, serial: Option<String> },
    #[error("{count} tokens are labelled {label:?}; give the serial number to pick one")]
    AmbiguousToken { label: String, count: usize },
    /// The PIN differs from the one the token is logged in with.
    #[error("the PIN for token {label:?} is incorrect")]
    PinIncorrect { label: String },
    /// `C_Login` says the user is logged in already, though this process
    /// never logged in to the token, so the PIN cannot be proven.
    #[error("the PKCS#11 module says the user is already logged in to token {label:?}, though this service never logged in to it: the module shares one login among its tokens (openCryptoki 3.8's soft token does), so only one of them can be used at a time")]
    LoginShared { label: String },
    #[error("the user is logged in to token {label:?} in this process; the security officer's work needs it logged out")]
    UserSessionOpen { label: String },
    #[error("tokens {from:?} and {to:?} share no cloning domain key; register the connection with so_password to establish one")]
    NoCloningDomain { from: String, to: String },
    #[error("the module has no free slot to initialise a new token in")]
    NoFreeSlot,
    /// `why` ends the sentence: the remap target is missing too, or
    /// remapping is off (empty when the mechanism has no remap).
    #[error("token {token:?} does not support {mechanism}{why}")]
    MechanismUnsupported {
        token: String,
        mechanism: String,
        why: String,
    },
    #[error("object {handle} holds a malformed {attribute}: {problem}")]
    MalformedObject {
        handle: u64,
        attribute: &'static str,
        problem: String,
    },
    /// The token is known to be away (its calls failed, and a fresh session
    /// could not reach it either): it is not called until a look finds it
    /// back (`Token::probe`), so that work waits for it.
    #[error("token {label:?} (serial {serial}) has been unreachable for {away_secs} s: {cause}")]
    Away {
        label: String,
        serial: String,
        since: SystemTime,
        away_secs: u64,
        cause: String,
    },
    /// An object handle taken before the module was re-initialised, which
    /// renumbers handles: the object must be looked up again.
    #[error("object handle {handle} dates from before the PKCS#11 module was re-initialised; look the object up again")]
    StaleHandle { handle: u64 },
    /// The key's attributes do not allow the call (`CKR_KEY_FUNCTION_NOT_PERMITTED`:
    /// no `CKA_ENCRYPT` for `C_Encrypt`, no `CKA_DECRYPT` for `C_Decrypt`).
    #[error("the key (object {handle}) may not be used for {function}")]
    KeyUseNotPermitted { handle: u64, function: &'static str },
    /// What was to be decrypted does not authenticate under the key: the
    /// ciphertext, IV, tag or additional data is not what was encrypted.
    #[error("the ciphertext does not authenticate under the key")]
    NotAuthentic,
}

/// What the PKCS#11 library (or the binding to it) said, as a source for
/// `TokenError`: it prints, and callers ask `TokenError` what it means; the
/// binding's own type stays inside this crate.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct Pkcs11Failure(pub(crate) CryptokiError);

impl TokenError {
    /// Whether the token refused the PIN: the operator gave a wrong one.
    pub fn is_pin_incorrect(&self) -> bool {
        self.rv() == Some(RvError::PinIncorrect)
    }

    /// The PKCS#11 return value behind this error, when a call produced one.
    pub(crate) fn rv(&self) -> Option<RvError> {
        match self {
            TokenError::Call {
                source: Pkcs11Failure(CryptokiError::Pkcs11(rv, _)),
                ..
            } => Some(*rv),
            TokenError::PinIncorrect { .. } => Some(RvError::PinIncorrect),
            _ => None,
        }
    }

    /// A short name for metrics: the `CKR_` code of a failed call, else the kind.
    pub fn code(&self) -> &str {
        match self {
            TokenError::Call { code, .. } => code,
            TokenError::LoadModule { .. } => "load_module",
            TokenError::TokenNotFound { .. } => "token_not_found",
            TokenError::AmbiguousToken { .. } => "ambiguous_token",
            TokenError::PinIncorrect { .. } => "CKR_PIN_INCORRECT",
            TokenError::LoginShared { .. } => "login_shared",
            TokenError::UserSessionOpen { .. } => "user_session_open",
            TokenError::NoCloningDomain { .. } => "no_cloning_domain",
            TokenError::NoFreeSlot => "no_free_slot",
            TokenError::MechanismUnsupported { .. } => "mechanism_unsupported",
            TokenError::MalformedObject { .. } => "malformed_object",
            TokenError::Away { .. } => "token_unreachable",
            TokenError::StaleHandle { .. } => "stale_handle",
            TokenError::KeyUseNotPermitted { .. } => "CKR_KEY_FUNCTION_NOT_PERMITTED",
            TokenError::NotAuthentic => "not_authentic",
        }
    }

    /// Whether trying again later may succeed: the device, the token or the
    /// session failed, or the token is not (yet, or no longer) present. A
    /// template, mechanism, attribute or PIN error will fail again: not
    /// transient.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::TokenNotFound { .. } | TokenError::Away { .. } | TokenError::StaleHandle { .. } => {
                true
            }
            TokenError::Call { .. } => matches!(
                self.rv(),
                Some(
                    RvError::DeviceError
                        | RvError::DeviceMemory
                        | RvError::DeviceRemoved
                        | RvError::GeneralError
                        | RvError::FunctionFailed
                        | RvError::TokenNotPresent
                        | RvError::TokenNotRecognized
                        | RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::SessionCount
                        | RvError::UserNotLoggedIn
                        | RvError::CryptokiNotInitialized
                )
            ),
            TokenError::LoadModule { .. }
            | TokenError::AmbiguousToken { .. }
            | TokenError::PinIncorrect { .. }
            | TokenError::LoginShared { .. }
            | TokenError::UserSessionOpen { .. }
            | TokenError::NoCloningDomain { .. }
            | TokenError::NoFreeSlot
            | TokenError::MechanismUnsupported { .. }
            | TokenError::MalformedObject { .. }
            | TokenError::KeyUseNotPermitted { .. }
            | TokenError::NotAuthentic => false,
        }
    }

    /// Which token is away (`token_name`) and since when, if this error
    /// says one is: the caller's work should wait for it rather than fail.
    pub fn away(&self) -> Option<(String, SystemTime)> {
        match self {
            TokenError::Away {
                label, serial, since, ..
            } => Some((crate::token_name(label, serial), *since)),
            _ => None,
        }
    }

    /// Whether the module was re-initialised under the caller's work (an
    /// object handle it held is gone): the work may start again at once.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, TokenError::StaleHandle { .. })
    }

    /// Whether the error may mean the token or this process's sessions on it
    /// are gone (a device unplugged or unreachable, a token taken away, a
    /// session or login lost, the module no longer initialised), so that a
    /// fresh session should be tried before the token is called away. A
    /// general error is here too: SoftHSM2 answers every call on a token whose
    /// store went away with it.
    pub(crate) fn signals_absence(&self) -> bool {
        matches!(self, TokenError::TokenNotFound { .. })
            || matches!(
                self.rv(),
                Some(
                    RvError::DeviceError
                        | RvError::DeviceRemoved
                        | RvError::GeneralError
                        | RvError::TokenNotPresent
                        | RvError::TokenNotRecognized
                        | RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::UserNotLoggedIn
                        | RvError::CryptokiNotInitialized
                )
            )
    }

    /// Whether the call was refused before it did anything because of its
    /// session (closed, invalid, its login lost): safe to run again on a
    /// fresh session, even a write.
    pub(crate) fn refused_for_its_session(&self) -> bool {
        matches!(
            self.rv(),
            Some(RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn)
        )
    }

    /// Whether the session that produced this error should be thrown away
    /// instead of going back to the pool.
    pub(crate) fn breaks_session(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::DeviceError
                    | RvError::UserNotLoggedIn
            )
        )
    }
}

/// Wraps a cryptoki error with the function it came from. Errors that carry
/// their own function (`Pkcs11`) name it; others name the call we made.
pub(crate) fn call(function: &'static str) -> impl FnOnce(CryptokiError) -> TokenError {
    move |source| {
        let (function, code) = match &source {
            CryptokiError::Pkcs11(rv, f) => (format!("C_{f:?}"), ckr_name(*rv)),
            other => (function.to_owned(), format!("{other}")),
        };
        TokenError::Call {
            function,
            code,
            source: Pkcs11Failure(source),
        }
    }
}

/// `AttributeReadOnly` → `CKR_ATTRIBUTE_READ_ONLY`: the name PKCS#11 users know.
fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub type Result<T, E = TokenError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn token_errors_name_the_function_and_the_ckr_code() {
        let err = call("C_SetAttributeValue")(CryptokiError::Pkcs11(
            RvError::AttributeReadOnly,
            Function::SetAttributeValue,
        ));
        assert_eq!(
            err.to_string(),
            "C_SetAttributeValue returned CKR_ATTRIBUTE_READ_ONLY"
        );
        assert_eq!(err.rv(), Some(RvError::AttributeReadOnly));
        assert!(!err.breaks_session());
        assert!(!err.is_transient(), "the template will fail again");
        let device =
            call("C_GenerateKey")(CryptokiError::Pkcs11(RvError::DeviceError, Function::GenerateKey));
        assert!(device.is_transient() && device.breaks_session());
        let general = call("C_GenerateKey")(CryptokiError::Pkcs11(
            RvError::GeneralError,
            Function::GenerateKey,
        ));
        assert!(general.is_transient());
        let gone = TokenError::TokenNotFound {
            label: "t".into(),
            serial: None,
        };
        assert!(gone.is_transient());
        assert!(!TokenError::PinIncorrect { label: "t".into() }.is_transient());
        let err = call("C_Login")(CryptokiError::Pkcs11(RvError::PinIncorrect, Function::Login));
        assert_eq!(err.to_string(), "C_Login returned CKR_PIN_INCORRECT");
    }
}
