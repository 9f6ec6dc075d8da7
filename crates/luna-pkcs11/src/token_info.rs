//! `C_GetTokenInfo`, read tolerantly.
//!
//! cryptoki 0.12 converts the whole `CK_TOKEN_INFO` and fails the call when any
//! field does not parse. openCryptoki's soft token sets `CKF_CLOCK_ON_TOKEN`
//! with a `utcTime` that is not fourteen digits, so every slot listing failed
//! ("Error parsing string as integer"), and a Luna partition reports a clock
//! too. The service needs the label, serial number, manufacturer, model and
//! one flag: it reads those itself, decodes what it can, and names what it
//! could not instead of failing.

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CryptokiError, Rv};
use cryptoki::slot::Slot;
use cryptoki_sys::{
    CKF_CLOCK_ON_TOKEN, CKF_TOKEN_INITIALIZED, CK_FUNCTION_LIST, CK_RV, CK_SLOT_ID, CK_TOKEN_INFO,
};

use crate::error::{call, Result};
use crate::module::TokenSummary;

/// The module's `C_GetTokenInfo`, called directly.
#[derive(Debug)]
pub(crate) struct TokenInfoReader {
    get_token_info: unsafe extern "C" fn(CK_SLOT_ID, *mut CK_TOKEN_INFO) -> CK_RV,
}

impl TokenInfoReader {
    /// Loads the module a second time (`dlopen` hands back the instance the
    /// context initialised) and takes `C_GetTokenInfo` from its function
    /// list: PKCS#11 requires only `C_GetFunctionList` to be exported.
    ///
    /// The module is never unloaded, once per `Module::open` of a path not
    /// already open: openCryptoki registers exit handlers in its own code, and
    /// a process that had unloaded it crashed as it exited (SIGSEGV at the end
    /// of a graceful stop, seen here). This handle keeps it loaded.
    pub(crate) fn load(path: &Path) -> std::result::Result<Self, CryptokiError> {
        // SAFETY: loading a PKCS#11 module runs its initialisers, as cryptoki's
        // own `Pkcs11::new` does for the same file just before.
        #[allow(unsafe_code)]
        let library = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(CryptokiError::LibraryLoading)?;
        let library: &'static cryptoki_sys::Pkcs11 = Box::leak(Box::new(library));
        let get_function_list = library
            .C_GetFunctionList
            .as_ref()
            .map_err(|_| CryptokiError::NullFunctionPointer)?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `C_GetFunctionList` writes a pointer to the module's own
        // function list into the pointer we own.
        #[allow(unsafe_code)]
        let rv = unsafe { get_function_list(&mut list) };
        Rv::from(rv).into_result(Function::GetFunctionList)?;
        // SAFETY: after CKR_OK the pointer is null or points at the module's
        // function list, which lives as long as the module (loaded for good,
        // above); null, or a null entry, is refused.
        #[allow(unsafe_code)]
        let list = unsafe { list.as_ref() };
        let get_token_info = list
            .and_then(|list| list.C_GetTokenInfo)
            .ok_or(CryptokiError::NullFunctionPointer)?;
        Ok(TokenInfoReader { get_token_info })
    }

    /// What the token in `slot` says of itself.
    pub(crate) fn read(&self, slot: Slot) -> Result<TokenSummary> {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `C_GetTokenInfo` takes a slot id and fills the CK_TOKEN_INFO it
        // is pointed at (a fixed-size struct we own); the module was initialised
        // by this process's context before any slot was listed.
        #[allow(unsafe_code)]
        let rv = unsafe { (self.get_token_info)(slot.into(), &mut info) };
        Rv::from(rv)
            .into_result(Function::GetTokenInfo)
            .map_err(call("C_GetTokenInfo"))?;
        Ok(summarize(&info))
    }
}

/// The fields the service uses, each decoded on its own; `unreadable` names
/// the ones that were not what PKCS#11 says they should be.
pub(crate) fn summarize(info: &CK_TOKEN_INFO) -> TokenSummary {
    let mut unreadable = Vec::new();
    let mut text = |field: &'static str, bytes: &[u8]| {
        let trimmed = trim_padding(bytes);
        match std::str::from_utf8(trimmed) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                unreadable.push(format!("{field} is not UTF-8"));
                String::from_utf8_lossy(trimmed).into_owned()
            }
        }
    };
    let label = text("label", &info.label);
    let manufacturer = text("manufacturerID", &info.manufacturerID);
    let model = text("model", &info.model);
    let serial_number = text("serialNumber", &info.serialNumber);
    if info.flags & CKF_CLOCK_ON_TOKEN != 0 && !info.utcTime[..14].iter().all(u8::is_ascii_digit) {
        unreadable.push(format!(
            "utcTime {:?} is not a time (the token says it has a clock)",
            String::from_utf8_lossy(&info.utcTime)
        ));
    }
    TokenSummary {
        label,
        serial_number,
        manufacturer,
        model,
        initialized: info.flags & CKF_TOKEN_INITIALIZED != 0,
        unreadable,
    }
}

/// PKCS#11 pads these fields with blanks; some modules pad with NULs instead.
fn trim_padding(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != 0)
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded<const N: usize>(text: &[u8]) -> [u8; N] {
        let mut field = [b' '; N];
        field[..text.len()].copy_from_slice(text);
        field
    }

    #[test]
    fn a_malformed_clock_and_a_non_utf8_label_are_named_not_fatal() {
        let mut info = CK_TOKEN_INFO {
            label: padded(b"ock1"),
            manufacturerID: padded(b"IBM Corp."),
            model: padded(b"IBM SoftTok"),
            serialNumber: padded(b"123"),
            flags: CKF_CLOCK_ON_TOKEN | CKF_TOKEN_INITIALIZED,
            ..CK_TOKEN_INFO::default()
        };
        info.utcTime = *b"20261129 0312\0\0\0";
        let summary = summarize(&info);
        assert_eq!(
            (summary.label.as_str(), summary.serial_number.as_str()),
            ("ock1", "123")
        );
        assert_eq!(summary.manufacturer, "IBM Corp.");
        assert_eq!(summary.model, "IBM SoftTok");
        assert!(summary.initialized);
        assert_eq!(summary.unreadable.len(), 1, "{:?}", summary.unreadable);
        assert!(
            summary.unreadable[0].starts_with("utcTime"),
            "{:?}",
            summary.unreadable
        );

        info.label = padded(b"caf\xe9");
        info.utcTime = *b"2026112903120500";
        info.flags = CKF_CLOCK_ON_TOKEN;
        let summary = summarize(&info);
        assert_eq!(summary.label, "caf\u{fffd}");
        assert!(!summary.initialized);
        assert_eq!(summary.unreadable, ["label is not UTF-8"]);
    }

    #[test]
    fn padding_is_blanks_or_nuls() {
        assert_eq!(trim_padding(b"p1  \0\0"), b"p1");
        assert_eq!(trim_padding(b"   "), b"");
        assert_eq!(trim_padding(b"a b "), b"a b");
    }
}
