//! Creates made under an `Idempotency-Key`: recorded in the transaction of
//! what they made, looked up when the same caller sends the key again.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use luna_domain::idempotency::IdempotentRequest;
use uuid::Uuid;

use crate::codec::micros;
use crate::db::DbConnection;
use crate::error::{Result, StoreError};
use crate::schema::idempotent_requests;
use crate::Store;

/// Records, inside the caller's write transaction, that `request` made
/// `resource`. Another create that took the key first is
/// `StoreError::IdempotencyKeyTaken` (the transaction then rolls back).
pub(crate) fn remember(conn: &mut DbConnection, request: &IdempotentRequest, resource: Uuid) -> Result<()> {
    diesel::insert_into(idempotent_requests::table)
        .values((
            idempotent_requests::caller.eq(&request.caller),
            idempotent_requests::idempotency_key.eq(&request.key),
            idempotent_requests::route.eq(&request.route),
            idempotent_requests::body_digest.eq(&request.body_digest),
            idempotent_requests::resource_id.eq(resource.to_string()),
            idempotent_requests::created_at.eq(micros(crate::now())),
        ))
        .execute(conn)
        .map_err(|e| match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                StoreError::IdempotencyKeyTaken
            }
            other => StoreError::Query(other),
        })?;
    Ok(())
}

impl Store {
    /// The request first made under `caller`'s `key`, and what it made.
    pub fn idempotent_request(&self, caller: &str, key: &str) -> Result<Option<(IdempotentRequest, Uuid)>> {
        let row: Option<(String, String, String, String, String)> = self.read(|conn| {
            Ok(idempotent_requests::table
                .find((caller, key))
                .select((
                    idempotent_requests::caller,
                    idempotent_requests::idempotency_key,
                    idempotent_requests::route,
                    idempotent_requests::body_digest,
                    idempotent_requests::resource_id,
                ))
                .first(conn)
                .optional()?)
        })?;
        row.map(|(caller, key, route, body_digest, resource)| {
            let made =
                Uuid::parse_str(&resource).map_err(|e| StoreError::corrupt("idempotent request", e))?;
            Ok((
                IdempotentRequest {
                    caller,
                    key,
                    route,
                    body_digest,
                },
                made,
            ))
        })
        .transpose()
    }
}
