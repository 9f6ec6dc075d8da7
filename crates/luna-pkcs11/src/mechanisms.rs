//! PKCS#11 mechanisms: the codes of the reference's mechanisms (Luna's
//! vendor ones among them), the ones replication needs, and `CK_ULONG`.

use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism as CkMechanism, MechanismType};
use luna_domain::Mechanism;

/// The token mechanism for each of the reference's mechanisms. The two FIPS
/// 186-3 ones are Luna vendor mechanisms (`CKM_VENDOR_DEFINED` + 0x13C/0x13D).
pub(crate) fn mechanism_code(mechanism: Mechanism) -> u64 {
    const CKM_VENDOR_DEFINED: u64 = 0x8000_0000;
    match mechanism {
        Mechanism::RsaPkcsKeyPairGen => 0x0000,
        Mechanism::RsaX931KeyPairGen => 0x000A,
        Mechanism::AesKeyGen => 0x1080,
        Mechanism::RsaFips1863AuxPrimeKeyPairGen => CKM_VENDOR_DEFINED + 0x13C,
        Mechanism::RsaFips1863PrimeKeyPairGen => CKM_VENDOR_DEFINED + 0x13D,
    }
}

/// The mechanisms replication needs on every member of an HA group, beside
/// the generation ones: the cloning domain and the ephemeral agreement both
/// make P-256 pairs, derive AES keys by ECDH and wrap with AES key wrap.
pub const REPLICATION_MECHANISMS: &[(&str, CkUlong)] = &[
    ("CKM_EC_KEY_PAIR_GEN", cryptoki_sys::CKM_EC_KEY_PAIR_GEN),
    ("CKM_ECDH1_DERIVE", cryptoki_sys::CKM_ECDH1_DERIVE),
    ("CKM_AES_KEY_WRAP_PAD", cryptoki_sys::CKM_AES_KEY_WRAP_PAD),
];

/// The raw codes of every mechanism whose support `TokenInfo` reports: the
/// ones this service uses.
pub(crate) fn probed_codes() -> impl Iterator<Item = u64> {
    Mechanism::ALL
        .iter()
        .map(|m| mechanism_code(*m))
        .chain(REPLICATION_MECHANISMS.iter().map(|(_, code)| widen(*code)))
}

/// A mechanism type from its raw code, for `C_GetMechanismInfo` and
/// generation. cryptoki 0.12's `get_mechanism_list` drops the codes it does
/// not name, so a Luna token's mechanisms would look absent without this.
/// Vendor codes (Luna's FIPS 186-3 ones) go through cryptoki's vendor-defined
/// constructor; standard codes through the type's layout, since cryptoki
/// names no `CKM_RSA_X9_31_KEY_PAIR_GEN`.
pub(crate) fn mechanism_type(code: u64) -> MechanismType {
    if let Ok(vendor) = MechanismType::new_vendor_defined(narrow(code)) {
        return vendor;
    }
    // SAFETY: `MechanismType` is `#[repr(transparent)]` over `CK_MECHANISM_TYPE`
    // (cryptoki documents that layout), and every value is a valid
    // `CK_MECHANISM_TYPE`: the module answers CKR_MECHANISM_INVALID to unknown ones.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute::<CkUlong, MechanismType>(narrow(code))
    }
}

pub(crate) fn ck_mechanism(mechanism: Mechanism) -> CkMechanism<'static> {
    match mechanism {
        Mechanism::AesKeyGen => CkMechanism::AesKeyGen,
        Mechanism::RsaPkcsKeyPairGen => CkMechanism::RsaPkcsKeyPairGen,
        other => CkMechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
            mechanism_type(mechanism_code(other)),
            None,
        )),
    }
}

/// PKCS#11's `CK_ULONG`: C's `unsigned long`, 32 or 64 bits by platform.
pub(crate) type CkUlong = std::os::raw::c_ulong;

/// Widens a `CK_ULONG`; a plain cast, since on 64-bit Unix the two are one type.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn widen(value: CkUlong) -> u64 {
    value as u64
}

/// Narrows to a `CK_ULONG`. Every value narrowed here came from the module as a
/// `CK_ULONG`, or is a mechanism code below 2^32, so nothing is cut off.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn narrow(value: u64) -> CkUlong {
    value as CkUlong
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mechanism_keeps_its_raw_code() {
        for &mechanism in Mechanism::ALL {
            let code = mechanism_code(mechanism);
            assert_eq!(widen(*mechanism_type(code)), code, "{mechanism}");
            assert_eq!(
                widen(*ck_mechanism(mechanism).mechanism_type()),
                code,
                "{mechanism}"
            );
        }
        assert_eq!(mechanism_code(Mechanism::RsaX931KeyPairGen), 0x0A);
    }
}
