//! Connections (how to reach tokens) and partitions (where keys live).
//!
//! A connection lists one token, or several forming an HA group whose
//! members hold copies of the same keys; it is registered as one CCKM
//! partition. Validation here covers what is known before asking a token;
//! the caller then describes each token, proves the PIN, and for an HA group
//! checks [`check_distinct_serials`].

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{DomainError, Result};
use crate::key::check_label;

/// One token of a connection: a Luna partition, or a SoftHSM2 token in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The HSM's host as the user gave it; reported, not used to reach the
    /// token (the PKCS#11 module's own configuration does that).
    pub hostname: String,
    /// The token's label, by which the module's slot is found.
    pub partition_label: String,
    /// The token's serial number; when absent at registration the token found by
    /// label supplies it, so a stored member always has one.
    pub serial_number: String,
}

/// A registered set of tokens sharing one crypto-officer PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The connection's id, the caller's.
    pub id: Uuid,
    /// A name for people (a label: see [`crate::key::check_label`]).
    pub name: String,
    /// Free text; may be empty.
    pub description: String,
    /// Its members form an HA group (keys are cloned to every member).
    pub ha_enabled: bool,
    /// Generate with `CKM_RSA_PKCS_KEY_PAIR_GEN` when a token lacks a Luna RSA mechanism.
    pub remap_rsa_mechanisms: bool,
    /// The registered HSM server its partitions are on, if the client named one.
    pub server_id: Option<Uuid>,
    /// How its last test ended (`POST …/connections/{id}/test`), if it had one.
    pub last_check: Option<ConnectionCheck>,
    /// What CipherTrust uses it for (`cckm`…), as the client named them.
    pub products: Vec<String>,
    /// The client's own data, JSON text the edge checked.
    pub meta: Option<String>,
    /// Its tokens, in the order given; the first is where keys are made.
    pub members: Vec<Member>,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

/// The longest connection description.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// A description: free text of at most [`MAX_DESCRIPTION_CHARS`] characters,
/// without control characters other than line breaks and tabs.
pub fn check_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(DomainError::invalid(format!(
            "description has more than {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    if description
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(DomainError::invalid("description holds a control character"));
    }
    Ok(())
}

/// Product names a client gives a connection: each 1 to 64 printable
/// characters without commas, none twice.
pub fn check_products(products: Vec<String>) -> Result<Vec<String>> {
    let mut checked: Vec<String> = Vec::with_capacity(products.len());
    for product in products {
        if product.is_empty()
            || product.chars().count() > 64
            || product
                .chars()
                .any(|c| c == ',' || !(c.is_ascii_graphic() || c == ' '))
        {
            return Err(DomainError::invalid(format!(
                "product {product:?} must be 1 to 64 printable characters without commas"
            )));
        }
        if !checked.contains(&product) {
            checked.push(product);
        }
    }
    Ok(checked)
}

/// How a test of a connection ended: every member logged in, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCheck {
    /// Every member answered and took the PIN.
    pub ok: bool,
    /// When it was tested.
    pub at: OffsetDateTime,
    /// What failed, member by member; `None` when all worked.
    pub error: Option<String>,
}

/// A connection's token set registered as one CCKM partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition's id, which keys and jobs name.
    pub id: Uuid,
    /// The connection whose tokens (and PIN) it uses.
    pub connection_id: Uuid,
    /// The first member's label, as the reference reports it.
    pub partition_label: String,
    /// The first member's serial number, as the reference reports it.
    pub serial_number: String,
    /// Its members form an HA group.
    pub ha_enabled: bool,
    /// Whether an RSA mechanism a member lacks is replaced by one it has
    /// (the connection's policy, read with the partition: a key's work needs
    /// both).
    pub remap_rsa_mechanisms: bool,
    /// The connection's members, first one first.
    pub members: Vec<Member>,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

/// A member as it arrives in a connection request.
#[derive(Debug, Clone, Default)]
pub struct MemberRequest {
    /// Optional; empty when absent.
    pub hostname: Option<String>,
    /// Required: the token's label, at most 32 characters.
    pub partition_label: Option<String>,
    /// Optional: tells apart tokens with one label; at most 16 printable characters.
    pub serial_number: Option<String>,
}

/// A connection request as it arrives. The PINs are secrets from the start.
#[derive(Debug, Default)]
pub struct ConnectionRequest {
    /// Required: the connection's name.
    pub name: Option<String>,
    /// Optional free text.
    pub description: Option<String>,
    /// Required: the crypto officer PIN shared by every member.
    pub password: Option<SecretString>,
    /// The security officer PIN, only for an HA connection: used once to
    /// set up the cloning domain, never stored.
    pub so_password: Option<SecretString>,
    /// Whether the members form an HA group; without it, exactly one member.
    pub ha_enabled: bool,
    /// Whether to remap Luna RSA mechanisms a token lacks; on when absent.
    pub remap_rsa_mechanisms: Option<bool>,
    /// The HSM server its partitions are on (a registered server's id).
    pub server_id: Option<Uuid>,
    /// Product names (`cckm`, …): 1 to 64 printable characters each, no commas.
    pub products: Option<Vec<String>>,
    /// The client's own data, JSON text the edge checked.
    pub meta: Option<String>,
    /// The tokens (the reference calls them partitions).
    pub partitions: Vec<MemberRequest>,
}

/// A member whose serial may still be unknown until the token is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// The checked hostname, or empty.
    pub hostname: String,
    /// The checked token label.
    pub partition_label: String,
    /// The serial if given; else the token found by label supplies it.
    pub serial_number: Option<String>,
}

/// A connection request that passed every rule known before asking the tokens.
#[derive(Debug)]
pub struct ConnectionSpec {
    /// The checked name.
    pub name: String,
    /// The description, or empty.
    pub description: String,
    /// The crypto officer PIN, not empty; still to be proved on each token.
    pub password: SecretString,
    /// The security officer PIN; only ever present for an HA connection.
    pub so_password: Option<SecretString>,
    /// Whether the members form an HA group.
    pub ha_enabled: bool,
    /// The remap policy, defaulted to on.
    pub remap_rsa_mechanisms: bool,
    /// The HSM server its partitions are on, if named.
    pub server_id: Option<Uuid>,
    /// Product names, checked.
    pub products: Vec<String>,
    /// The client's own data, JSON text.
    pub meta: Option<String>,
    /// One member, or up to [`MAX_MEMBERS`] for an HA group, none named twice.
    pub members: Vec<MemberSpec>,
}

/// PKCS#11 tokens hold labels and serials in fixed fields of 32 and 16 characters.
const TOKEN_LABEL_CHARS: usize = 32;
const TOKEN_SERIAL_CHARS: usize = 16;
/// Bounds the cost of one registration; a Luna HA group has at most a handful.
pub const MAX_MEMBERS: usize = 16;

/// The members of an HA group are told apart by serial number
/// (`replication_info` maps each member's serial to its state), so two
/// members reporting one serial would be confused: such a group is refused.
pub fn check_distinct_serials(members: &[Member]) -> Result<()> {
    for (index, member) in members.iter().enumerate() {
        if let Some(other) = members[..index]
            .iter()
            .find(|m| m.serial_number == member.serial_number)
        {
            return Err(DomainError::invalid(format!(
                "partitions {:?} and {:?} both report serial number {:?}; the members of an HA group are \
                 told apart by serial number (replication_info is keyed by it), so theirs must differ \
                 (openCryptoki gives every soft token serial 123)",
                other.partition_label, member.partition_label, member.serial_number
            )));
        }
    }
    Ok(())
}

impl MemberRequest {
    /// One member's fields checked; `at` names it in errors (`partitions[0]`,
    /// or empty for a member sent on its own).
    pub fn validate(self, at: &str) -> Result<MemberSpec> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let member = self;
        let partition_label = check_label(
            &field("partition_label"),
            member.partition_label.as_deref().unwrap_or(""),
        )?;
        if partition_label.chars().count() > TOKEN_LABEL_CHARS {
            return Err(DomainError::invalid(format!(
                "{} is longer than a token label ({TOKEN_LABEL_CHARS} characters)",
                field("partition_label")
            )));
        }
        let serial_number = match member.serial_number.filter(|s| !s.is_empty()) {
            Some(serial)
                if serial.chars().count() > TOKEN_SERIAL_CHARS
                    || serial.chars().any(|c| !c.is_ascii_graphic()) =>
            {
                return Err(DomainError::invalid(format!(
                    "{} must be up to {TOKEN_SERIAL_CHARS} printable characters",
                    field("serial_number")
                )))
            }
            other => other,
        };
        let hostname = match member.hostname.filter(|h| !h.is_empty()) {
            Some(h) => check_label(&field("hostname"), &h)?,
            None => String::new(),
        };
        Ok(MemberSpec {
            hostname,
            partition_label,
            serial_number,
        })
    }
}

impl ConnectionRequest {
    /// Every rule known before asking the tokens: a name, a PIN, the member
    /// count that fits `is_ha_enabled`, labels and serials that fit a token's
    /// fields, no token named twice, `so_password` only for HA. Consumes
    /// the request so the PINs move into the spec without a copy.
    pub fn validate(self) -> Result<ConnectionSpec> {
        let name = check_label("name", self.name.as_deref().unwrap_or(""))?;
        let password = self
            .password
            .filter(|p| !p.expose_secret().is_empty())
            .ok_or_else(|| DomainError::invalid("password (the crypto officer PIN) is required"))?;
        if self.so_password.is_some() && !self.ha_enabled {
            return Err(DomainError::invalid(
                "so_password is only used to set up the cloning domain of an HA connection; set is_ha_enabled or leave it out",
            ));
        }
        match (self.ha_enabled, self.partitions.len()) {
            (_, 0) => return Err(DomainError::invalid("partitions must list at least one token")),
            (false, 1) => {}
            (false, n) => {
                return Err(DomainError::invalid(format!(
                    "a connection without is_ha_enabled has exactly one partition; {n} were given"
                )))
            }
            (true, n) if n > MAX_MEMBERS => {
                return Err(DomainError::invalid(format!(
                    "an HA connection has at most {MAX_MEMBERS} partitions; {n} were given"
                )))
            }
            (true, _) => {}
        }
        let mut members: Vec<MemberSpec> = Vec::with_capacity(self.partitions.len());
        for (index, member) in self.partitions.into_iter().enumerate() {
            let at = format!("partitions[{index}]");
            let field = |name: &str| format!("{at}.{name}");
            let spec = member.validate(&at)?;
            if members
                .iter()
                .any(|m| m.partition_label == spec.partition_label && m.serial_number == spec.serial_number)
            {
                return Err(DomainError::invalid(format!(
                    "{} names the same token twice",
                    field("partition_label")
                )));
            }
            members.push(spec);
        }
        Ok(ConnectionSpec {
            name,
            description: {
                let description = self.description.unwrap_or_default();
                check_description(&description)?;
                description
            },
            password,
            so_password: self.so_password,
            ha_enabled: self.ha_enabled,
            remap_rsa_mechanisms: self.remap_rsa_mechanisms.unwrap_or(true),
            server_id: self.server_id,
            products: check_products(self.products.unwrap_or_default())?,
            meta: self.meta,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(label: &str, serial: Option<&str>) -> MemberRequest {
        MemberRequest {
            hostname: Some("hsm1".into()),
            partition_label: Some(label.into()),
            serial_number: serial.map(str::to_owned),
        }
    }

    fn request(ha: bool, members: Vec<MemberRequest>) -> ConnectionRequest {
        ConnectionRequest {
            name: Some("hsm-a".into()),
            password: Some(SecretString::from("1234")),
            ha_enabled: ha,
            partitions: members,
            ..Default::default()
        }
    }

    #[test]
    fn single_and_ha_connections_validate() {
        let spec = request(false, vec![member("p1", Some("123"))])
            .validate()
            .unwrap();
        assert!(spec.remap_rsa_mechanisms);
        assert_eq!(spec.members[0].serial_number.as_deref(), Some("123"));
        let spec = request(true, vec![member("p1", None), member("p2", None)])
            .validate()
            .unwrap();
        assert_eq!(spec.members.len(), 2);
    }

    #[test]
    fn bad_connections_say_what_is_wrong() {
        let cases = vec![
            (
                request(false, vec![member("p1", None), member("p2", None)]),
                "exactly one partition; 2 were given",
            ),
            (request(true, vec![]), "at least one token"),
            (
                request(true, vec![member("p1", None), member("p1", None)]),
                "same token twice",
            ),
            (
                request(false, vec![member(&"x".repeat(33), None)]),
                "longer than a token label",
            ),
            (
                request(false, vec![member("p1", Some("12 3"))]),
                "printable characters",
            ),
            (
                ConnectionRequest {
                    password: None,
                    ..request(false, vec![member("p1", None)])
                },
                "password",
            ),
            (
                ConnectionRequest {
                    name: None,
                    ..request(false, vec![member("p1", None)])
                },
                "name must not be empty",
            ),
            (
                ConnectionRequest {
                    so_password: Some(SecretString::from("so")),
                    ..request(false, vec![member("p1", None)])
                },
                "so_password",
            ),
        ];
        for (req, needle) in cases {
            let err = req.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn a_pin_never_shows_in_debug_output() {
        let spec = request(false, vec![member("p1", None)]).validate().unwrap();
        assert!(!format!("{spec:?}").contains("1234"));
    }

    #[test]
    fn an_ha_group_needs_distinct_serial_numbers() {
        let member = |label: &str, serial: &str| Member {
            hostname: String::new(),
            partition_label: label.into(),
            serial_number: serial.into(),
        };
        assert!(check_distinct_serials(&[member("a", "1"), member("b", "2"), member("c", "3")]).is_ok());
        let err = check_distinct_serials(&[member("a", "1"), member("ock1", "123"), member("ock2", "123")])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"partitions "ock1" and "ock2" both report serial number "123""#),
            "{err}"
        );
    }
}
