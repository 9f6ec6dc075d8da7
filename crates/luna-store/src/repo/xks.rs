//! External key stores (`xks_keystores`) and their SigV4 credentials
//! (`xks_credentials`), each secret sealed under the PIN key as connection
//! PINs are (bound to its access key id); a rotation ends the older
//! credentials in the transaction that adds the new one.

use diesel::prelude::*;
use luna_domain::xks::keystore::{rotated, Credential, Keystore};
use secrecy::SecretString;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::codec::{from_micros, micros, uuid};
use crate::db::DbConnection;
use crate::error::Result;
use crate::repo::conflict_on_unique;
use crate::schema::{xks_credentials, xks_keystores};
use crate::{AuditEntry, Durability, Store};

type CredentialRow = (String, i64, Option<i64>);

/// A keystore's row, read and written whole.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = xks_keystores)]
struct KeystoreRow {
    id: String,
    name: String,
    uri_path_prefix: String,
    region: String,
    partition_id: String,
    created_at: i64,
    updated_at: i64,
}

impl KeystoreRow {
    fn from_domain(keystore: &Keystore) -> KeystoreRow {
        KeystoreRow {
            id: keystore.id.to_string(),
            name: keystore.name.clone(),
            uri_path_prefix: keystore.uri_path_prefix.clone(),
            region: keystore.region.clone(),
            partition_id: keystore.partition_id.to_string(),
            created_at: micros(keystore.created_at),
            updated_at: micros(keystore.updated_at),
        }
    }

    fn into_domain(self) -> Result<Keystore> {
        Ok(Keystore {
            id: uuid("keystore id", &self.id)?,
            name: self.name,
            uri_path_prefix: self.uri_path_prefix,
            region: self.region,
            partition_id: uuid("keystore partition_id", &self.partition_id)?,
            created_at: from_micros("keystore created_at", self.created_at)?,
            updated_at: from_micros("keystore updated_at", self.updated_at)?,
        })
    }
}

fn credential((access_key_id, created_at, expires_at): CredentialRow) -> Result<Credential> {
    Ok(Credential {
        access_key_id,
        created_at: from_micros("credential created_at", created_at)?,
        expires_at: expires_at
            .map(|t| from_micros("credential expires_at", t))
            .transpose()?,
    })
}

/// The credentials of keystore `id`, oldest first.
fn credentials_of(conn: &mut DbConnection, id: &str) -> Result<Vec<Credential>> {
    xks_credentials::table
        .filter(xks_credentials::keystore_id.eq(id))
        .order((
            xks_credentials::created_at.asc(),
            xks_credentials::access_key_id.asc(),
        ))
        .select((
            xks_credentials::access_key_id,
            xks_credentials::created_at,
            xks_credentials::expires_at,
        ))
        .load::<CredentialRow>(conn)?
        .into_iter()
        .map(credential)
        .collect()
}

impl Store {
    /// Records a keystore with its first credential (the secret sealed),
    /// and writes `audit`; a name or path prefix taken is a conflict.
    pub fn insert_keystore(
        &self,
        keystore: &Keystore,
        first: &Credential,
        secret: &SecretString,
        audit: &AuditEntry,
    ) -> Result<()> {
        let sealed = self.pins.seal(secret, &first.access_key_id)?;
        let row = KeystoreRow::from_domain(keystore);
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::insert_into(xks_keystores::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(|| {
                    format!(
                        "a keystore named {:?} or with uri_path_prefix {:?} exists already",
                        keystore.name, keystore.uri_path_prefix
                    )
                }))?;
            insert_credential(conn, &row.id, first, &sealed)?;
            pending.audit.push(audit.about(&row.id));
            Ok(())
        })
    }

    /// A keystore and its credentials (their secrets stay sealed).
    pub fn get_keystore(&self, id: Uuid) -> Result<Option<(Keystore, Vec<Credential>)>> {
        let id = id.to_string();
        self.read(|conn| {
            let Some(row) = xks_keystores::table
                .find(&id)
                .select(KeystoreRow::as_select())
                .first(conn)
                .optional()?
            else {
                return Ok(None);
            };
            Ok(Some((row.into_domain()?, credentials_of(conn, &id)?)))
        })
    }

    /// Every keystore with its credentials (their secrets stay sealed),
    /// oldest first: two statements, whatever the number of keystores.
    pub fn all_keystores(&self) -> Result<Vec<(Keystore, Vec<Credential>)>> {
        self.read(|conn| {
            let keystores = xks_keystores::table
                .order((xks_keystores::created_at.asc(), xks_keystores::id.asc()))
                .select(KeystoreRow::as_select())
                .load(conn)?;
            let mut credentials: Vec<(String, CredentialRow)> = xks_credentials::table
                .order((
                    xks_credentials::keystore_id.asc(),
                    xks_credentials::created_at.asc(),
                    xks_credentials::access_key_id.asc(),
                ))
                .select((
                    xks_credentials::keystore_id,
                    (
                        xks_credentials::access_key_id,
                        xks_credentials::created_at,
                        xks_credentials::expires_at,
                    ),
                ))
                .load(conn)?;
            keystores
                .into_iter()
                .map(|row| {
                    let of_this = credentials
                        .extract_if(.., |(keystore_id, _)| *keystore_id == row.id)
                        .map(|(_, c)| credential(c))
                        .collect::<Result<Vec<_>>>()?;
                    Ok((row.into_domain()?, of_this))
                })
                .collect()
        })
    }

    /// The keystore that serves `uri_path_prefix`.
    pub fn keystore_at(&self, uri_path_prefix: &str) -> Result<Option<Keystore>> {
        self.read(|conn| {
            xks_keystores::table
                .filter(xks_keystores::uri_path_prefix.eq(uri_path_prefix))
                .select(KeystoreRow::as_select())
                .first(conn)
                .optional()?
                .map(KeystoreRow::into_domain)
                .transpose()
        })
    }

    /// The secret of keystore `keystore_id`'s credential `access_key_id`,
    /// unsealed, if that credential is valid at `now`.
    pub fn credential_secret(
        &self,
        keystore_id: Uuid,
        access_key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SecretString>> {
        let keystore_id = keystore_id.to_string();
        let sealed: Option<(Vec<u8>, Option<i64>)> = self.read(|conn| {
            Ok(xks_credentials::table
                .find(access_key_id)
                .filter(xks_credentials::keystore_id.eq(&keystore_id))
                .select((xks_credentials::secret_ciphertext, xks_credentials::expires_at))
                .first(conn)
                .optional()?)
        })?;
        match sealed {
            Some((blob, expires_at)) if expires_at.is_none_or(|end| micros(now) < end) => {
                Ok(Some(self.pins.open(&blob, access_key_id)?))
            }
            _ => Ok(None),
        }
    }

    /// Adds `new` (its secret sealed) to keystore `id`, ending its older
    /// valid credentials as `rotated` says (the newest after `overlap`),
    /// and writes `audit`. `false` if there is no such keystore.
    pub fn rotate_credential(
        &self,
        id: Uuid,
        new: &Credential,
        secret: &SecretString,
        overlap: Duration,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let sealed = self.pins.seal(secret, &new.access_key_id)?;
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            // The keystore's row, locked on PostgreSQL for the rotation:
            // two at once would each keep an older credential alive.
            let touched = diesel::update(xks_keystores::table.find(&id))
                .set(xks_keystores::updated_at.eq(micros(new.created_at)))
                .execute(conn)?;
            if touched == 0 {
                return Ok(false);
            }
            let valid: Vec<Credential> = credentials_of(conn, &id)?
                .into_iter()
                .filter(|c| c.valid_at(new.created_at))
                .collect();
            for (access_key_id, end) in rotated(&valid, overlap, new.created_at)? {
                diesel::update(xks_credentials::table.find(&access_key_id))
                    .set(xks_credentials::expires_at.eq(Some(micros(end))))
                    .execute(conn)?;
            }
            insert_credential(conn, &id, new, &sealed)?;
            pending.audit.push(audit.clone());
            Ok(true)
        })
    }

    /// Deletes a keystore and its credentials, and writes `audit`.
    pub fn delete_keystore(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::delete(xks_credentials::table.filter(xks_credentials::keystore_id.eq(&id)))
                .execute(conn)?;
            let deleted = diesel::delete(xks_keystores::table.find(&id)).execute(conn)?;
            if deleted == 1 {
                pending.audit.push(audit.clone());
            }
            Ok(deleted == 1)
        })
    }
}

fn insert_credential(
    conn: &mut DbConnection,
    keystore_id: &str,
    credential: &Credential,
    sealed: &[u8],
) -> Result<()> {
    diesel::insert_into(xks_credentials::table)
        .values((
            xks_credentials::access_key_id.eq(&credential.access_key_id),
            xks_credentials::keystore_id.eq(keystore_id),
            xks_credentials::secret_ciphertext.eq(sealed),
            xks_credentials::created_at.eq(micros(credential.created_at)),
            xks_credentials::expires_at.eq(credential.expires_at.map(micros)),
        ))
        .execute(conn)?;
    Ok(())
}
