//! The key vocabulary of the reference: mechanisms, algorithms, object
//! types, statuses, operation kinds and origins, each spelled once.

use crate::wire::wire_enum;

wire_enum! {
    /// The five key-generation mechanisms of the reference.
    pub enum Mechanism ("mechanism") {
        /// Luna's FIPS 186-3 RSA pair with auxiliary primes (a vendor mechanism).
        RsaFips1863AuxPrimeKeyPairGen => "CKM_RSA_FIPS_186_3_AUX_PRIME_KEY_PAIR_GEN",
        /// RSA pair per ANSI X9.31.
        RsaX931KeyPairGen => "CKM_RSA_X9_31_KEY_PAIR_GEN",
        /// Luna's FIPS 186-3 RSA pair with probable primes (a vendor mechanism).
        RsaFips1863PrimeKeyPairGen => "CKM_RSA_FIPS_186_3_PRIME_KEY_PAIR_GEN",
        /// The standard PKCS#1 RSA pair; every token has it, so remaps go here.
        RsaPkcsKeyPairGen => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        /// An AES secret key.
        AesKeyGen => "CKM_AES_KEY_GEN",
    }
}

impl Mechanism {
    /// The algorithm of the key this mechanism makes, which fixes its sizes.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Mechanism::AesKeyGen => Algorithm::Aes,
            Mechanism::RsaFips1863AuxPrimeKeyPairGen
            | Mechanism::RsaX931KeyPairGen
            | Mechanism::RsaFips1863PrimeKeyPairGen
            | Mechanism::RsaPkcsKeyPairGen => Algorithm::Rsa,
        }
    }

    /// The objects this mechanism makes: a secret key, or a private then a public key.
    pub fn object_types(self) -> &'static [ObjectType] {
        match self.algorithm() {
            Algorithm::Aes => &[ObjectType::SecretKey],
            Algorithm::Rsa => &[ObjectType::PrivateKey, ObjectType::PublicKey],
        }
    }

    /// The mechanism a token without this one generates with instead, when the
    /// connection's remap policy is on (Luna's `RSAKeyGenMechRemap`).
    pub fn remap_target(self) -> Option<Mechanism> {
        match self {
            Mechanism::RsaFips1863AuxPrimeKeyPairGen
            | Mechanism::RsaX931KeyPairGen
            | Mechanism::RsaFips1863PrimeKeyPairGen => Some(Mechanism::RsaPkcsKeyPairGen),
            Mechanism::RsaPkcsKeyPairGen | Mechanism::AesKeyGen => None,
        }
    }
}

wire_enum! {
    /// Key algorithm as the reference spells it in `algorithm`.
    pub enum Algorithm ("algorithm") {
        /// An RSA key pair, recorded as two linked keys.
        Rsa => "rsa",
        /// An AES secret key.
        Aes => "aes",
    }
}

impl Algorithm {
    /// Sizes in bits that the reference allows for this algorithm.
    pub fn allowed_sizes(self) -> &'static [u32] {
        match self {
            Algorithm::Rsa => &[2048, 3072, 4096],
            Algorithm::Aes => &[128, 192, 256],
        }
    }
}

wire_enum! {
    /// The PKCS#11 class of a key object, as `object_type` spells it.
    pub enum ObjectType ("object_type") {
        /// `CKO_SECRET_KEY`: an AES key.
        SecretKey => "secret key",
        /// `CKO_PRIVATE_KEY`: the private half of an RSA pair.
        PrivateKey => "private key",
        /// `CKO_PUBLIC_KEY`: the public half of an RSA pair.
        PublicKey => "public key",
    }
}

wire_enum! {
    /// The life of a key record: `in_progress` → `AVAILABLE` → `DELETED`,
    /// or `in_progress` → `FAILED` when its create fails.
    pub enum KeyStatus ("status") {
        /// Accepted; the create has not made the object yet.
        InProgress => "in_progress",
        /// The object exists; the only status that takes new operations.
        Available => "AVAILABLE",
        /// Deleted from the HSM, or found on no member by a refresh. Final.
        Deleted => "DELETED",
        /// The create failed; `operation_error` says why. Final.
        Failed => "FAILED",
    }
}

wire_enum! {
    /// The operations that change a key; a record shows its last one in `operation`.
    pub enum OperationKind ("operation") {
        /// Generate the object (and clone it to the other HA members).
        KeyCreate => "keycreate",
        /// Change attributes (PATCH), on every member.
        KeyUpdate => "keyupdate",
        /// Copy the key to the HA members that lack it.
        KeyReplicate => "keyreplicate",
        /// Destroy the object on every member (the reference's delete-from-HSM;
        /// its wire name is the reference's).
        KeyDestroy => "keydelete",
    }
}

wire_enum! {
    /// The state of a key's last operation (see [`OperationStatus::wire`]
    /// for how a key body spells it).
    pub enum OperationStatus ("operation_status") {
        /// Running; the key takes no other operation until it ends.
        InProgress => "in_progress",
        /// Done on the token(s).
        Completed => "completed",
        /// Ended in failure; the reason is in `operation_error`.
        Failed => "failed",
    }
}

impl OperationStatus {
    /// The reference's spelling in a key body: a create reports `""` while it
    /// runs and `"created"` when done; every other operation uses the plain words.
    pub fn wire(self, operation: OperationKind) -> &'static str {
        match (operation, self) {
            (OperationKind::KeyCreate, OperationStatus::InProgress) => "",
            (OperationKind::KeyCreate, OperationStatus::Completed) => "created",
            (_, status) => status.as_str(),
        }
    }
}

wire_enum! {
    /// Where a key came from.
    pub enum Origin ("origin") {
        /// Made through this service (a create).
        Cckm => "cckm",
        /// Made outside the service and found by a refresh.
        External => "external",
        /// The reference's third value; this service never records it.
        Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_operation_status_uses_the_reference_spelling() {
        assert_eq!(OperationStatus::InProgress.wire(OperationKind::KeyCreate), "");
        assert_eq!(
            OperationStatus::Completed.wire(OperationKind::KeyCreate),
            "created"
        );
        assert_eq!(
            OperationStatus::Completed.wire(OperationKind::KeyUpdate),
            "completed"
        );
        assert_eq!(
            OperationStatus::InProgress.wire(OperationKind::KeyDestroy),
            "in_progress"
        );
    }
}
