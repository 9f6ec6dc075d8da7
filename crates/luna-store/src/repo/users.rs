use diesel::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::{from_micros, micros, uuid};
use crate::db::DbConnection;
use crate::error::Result;
use crate::models::UserRow;
use crate::repo::conflict_on_unique;
use crate::schema::{refresh_tokens, users};
use crate::Store;

/// A user as stored: the password only as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub groups: Vec<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub groups: Vec<String>,
}

impl UserRow {
    fn into_stored(self) -> Result<StoredUser> {
        Ok(StoredUser {
            id: uuid("user id", &self.id)?,
            username: self.username,
            password_hash: self.password_hash,
            groups: self
                .user_groups
                .split('\n')
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect(),
            created_at: from_micros("user created_at", self.created_at)?,
        })
    }
}

fn user_by(conn: &mut DbConnection, id: &str) -> Result<Option<StoredUser>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .optional()?
        .map(UserRow::into_stored)
        .transpose()
}

impl Store {
    /// Adds a user; a taken name is a conflict. Group names are one per line.
    pub fn insert_user(&self, user: &NewUser, now: OffsetDateTime) -> Result<StoredUser> {
        let row = UserRow {
            id: Uuid::new_v4().to_string(),
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            user_groups: user.groups.join("\n"),
            created_at: micros(now),
            updated_at: micros(now),
        };
        self.write(|conn| {
            diesel::insert_into(users::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(|| {
                    format!("a user named {:?} already exists", row.username)
                }))?;
            Ok(())
        })?;
        row.into_stored()
    }

    pub fn user_by_name(&self, username: &str) -> Result<Option<StoredUser>> {
        self.read(|conn| {
            users::table
                .filter(users::username.eq(username))
                .select(UserRow::as_select())
                .first(conn)
                .optional()?
                .map(UserRow::into_stored)
                .transpose()
        })
    }

    pub fn get_user(&self, id: Uuid) -> Result<Option<StoredUser>> {
        self.read(|conn| user_by(conn, &id.to_string()))
    }

    /// Users by name (all, or the one named `username`), `skip` and `limit`
    /// applied, and their total.
    pub fn list_users(
        &self,
        username: Option<&str>,
        skip: i64,
        limit: i64,
    ) -> Result<crate::Listed<StoredUser>> {
        let filtered = || {
            let mut q = users::table.into_boxed::<crate::db::MultiBackend>();
            if let Some(name) = username {
                q = q.filter(users::username.eq(name.to_owned()));
            }
            q
        };
        self.read(|conn| {
            let total: i64 = filtered().count().get_result(conn)?;
            let items = filtered()
                .order(users::username)
                .offset(skip)
                .limit(limit)
                .select(UserRow::as_select())
                .load(conn)?
                .into_iter()
                .map(UserRow::into_stored)
                .collect::<Result<_>>()?;
            Ok(crate::Listed { total, items })
        })
    }

    /// Sets a user's password hash and revokes every refresh token it holds,
    /// in one transaction; false if there is no such user.
    pub fn set_password(&self, id: Uuid, password_hash: &str) -> Result<bool> {
        let key = id.to_string();
        self.write(|conn| {
            let updated = diesel::update(users::table.find(&key))
                .set(users::password_hash.eq(password_hash))
                .execute(conn)?;
            diesel::delete(refresh_tokens::table.filter(refresh_tokens::user_id.eq(&key))).execute(conn)?;
            Ok(updated == 1)
        })
    }

    /// Deletes a user and its refresh tokens.
    pub fn delete_user(&self, id: Uuid) -> Result<bool> {
        self.write(|conn| Ok(diesel::delete(users::table.find(id.to_string())).execute(conn)? == 1))
    }

    /// Keeps a refresh token by its hash (the token itself is never stored).
    pub fn insert_refresh_token(
        &self,
        token_hash: &str,
        user: Uuid,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.write(|conn| {
            diesel::insert_into(refresh_tokens::table)
                .values((
                    refresh_tokens::token_hash.eq(token_hash),
                    refresh_tokens::user_id.eq(user.to_string()),
                    refresh_tokens::expires_at.eq(micros(expires_at)),
                    refresh_tokens::created_at.eq(micros(now)),
                ))
                .execute(conn)?;
            Ok(())
        })
    }

    /// Uses up a refresh token: it is deleted, and its user returned if it had
    /// not expired. A token works once, so a stolen copy races its owner.
    pub fn take_refresh_token(&self, token_hash: &str, now: OffsetDateTime) -> Result<Option<StoredUser>> {
        self.write(|conn| {
            let found: Option<(String, i64)> = refresh_tokens::table
                .find(token_hash)
                .select((refresh_tokens::user_id, refresh_tokens::expires_at))
                .first(conn)
                .optional()?;
            let Some((user_id, expires_at)) = found else {
                return Ok(None);
            };
            diesel::delete(refresh_tokens::table.find(token_hash)).execute(conn)?;
            if expires_at <= micros(now) {
                return Ok(None);
            }
            user_by(conn, &user_id)
        })
    }
}
