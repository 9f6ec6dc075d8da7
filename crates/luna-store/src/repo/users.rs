use diesel::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::{from_micros, micros, uuid};
use crate::db::DbConnection;
use crate::error::Result;
use crate::models::UserRow;
use crate::repo::conflict_on_unique;
use crate::schema::{refresh_tokens, sessions, users};
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

    /// Sets a user's password hash and ends every session it has (their
    /// refresh tokens go with them), in one transaction; false if there is
    /// no such user.
    pub fn set_password(&self, id: Uuid, password_hash: &str, now: OffsetDateTime) -> Result<bool> {
        self.change_user(
            id,
            (
                users::password_hash.eq(password_hash),
                users::updated_at.eq(micros(now)),
            ),
        )
    }

    /// Sets a user's groups (one per line) and ends every session it has, as
    /// `set_password`: its tokens carry the groups they were issued with.
    pub fn set_groups(&self, id: Uuid, groups: &[String], now: OffsetDateTime) -> Result<bool> {
        self.change_user(
            id,
            (
                users::user_groups.eq(groups.join("\n")),
                users::updated_at.eq(micros(now)),
            ),
        )
    }

    fn change_user<V>(&self, id: Uuid, change: V) -> Result<bool>
    where
        V: diesel::AsChangeset<Target = users::table> + Clone,
        V::Changeset: diesel::query_builder::QueryFragment<crate::db::MultiBackend>,
    {
        let key = id.to_string();
        self.write(|conn| {
            let updated = diesel::update(users::table.find(&key))
                .set(change.clone())
                .execute(conn)?;
            diesel::delete(sessions::table.filter(sessions::user_id.eq(&key))).execute(conn)?;
            Ok(updated == 1)
        })
    }

    /// Deletes a user; its sessions and refresh tokens go with it.
    pub fn delete_user(&self, id: Uuid) -> Result<bool> {
        self.write(|conn| Ok(diesel::delete(users::table.find(id.to_string())).execute(conn)? == 1))
    }

    /// Opens a session for a user who logged in, with its first refresh
    /// token (kept by its hash: the token itself is never stored). Sessions
    /// whose last refresh token has expired are pruned on the way.
    pub fn open_session(
        &self,
        user: Uuid,
        token_hash: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Uuid> {
        let session = Uuid::new_v4();
        let id = session.to_string();
        self.write(|conn| {
            diesel::delete(sessions::table.filter(sessions::expires_at.lt(micros(now)))).execute(conn)?;
            diesel::insert_into(sessions::table)
                .values((
                    sessions::id.eq(&id),
                    sessions::user_id.eq(user.to_string()),
                    sessions::created_at.eq(micros(now)),
                    sessions::expires_at.eq(micros(expires_at)),
                ))
                .execute(conn)?;
            insert_refresh_token(conn, &id, token_hash, expires_at, now)
        })?;
        Ok(session)
    }

    /// Trades a refresh token for the next one in its session: the presented
    /// token is deleted whatever happens (it works once, so a stolen copy
    /// races its owner), and if it had not expired and its session is still
    /// open, `next_hash` is stored in its place. Returns the user and session.
    pub fn refresh_session(
        &self,
        token_hash: &str,
        next_hash: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<(StoredUser, Uuid)>> {
        self.write(|conn| {
            let found: Option<(String, i64, String)> = refresh_tokens::table
                .inner_join(sessions::table)
                .filter(refresh_tokens::token_hash.eq(token_hash))
                .select((
                    refresh_tokens::session_id,
                    refresh_tokens::expires_at,
                    sessions::user_id,
                ))
                .first(conn)
                .optional()?;
            let Some((session, token_expires_at, user_id)) = found else {
                return Ok(None);
            };
            diesel::delete(refresh_tokens::table.find(token_hash)).execute(conn)?;
            if token_expires_at <= micros(now) {
                return Ok(None);
            }
            let Some(user) = user_by(conn, &user_id)? else {
                return Ok(None);
            };
            diesel::update(sessions::table.find(&session))
                .set(sessions::expires_at.eq(micros(expires_at)))
                .execute(conn)?;
            insert_refresh_token(conn, &session, next_hash, expires_at, now)?;
            Ok(Some((user, uuid("session id", &session)?)))
        })
    }

    /// The user a session belongs to, if it is open.
    pub fn session_user(&self, session: Uuid) -> Result<Option<Uuid>> {
        self.read(|conn| {
            sessions::table
                .find(session.to_string())
                .select(sessions::user_id)
                .first::<String>(conn)
                .optional()?
                .map(|user| uuid("session user id", &user))
                .transpose()
        })
    }

    /// Ends a session (a logout): its refresh tokens go with it, and access
    /// tokens naming it are refused from then on. False if it was not open.
    pub fn end_session(&self, session: Uuid) -> Result<bool> {
        self.write(|conn| Ok(diesel::delete(sessions::table.find(session.to_string())).execute(conn)? == 1))
    }
}

fn insert_refresh_token(
    conn: &mut DbConnection,
    session: &str,
    token_hash: &str,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(token_hash),
            refresh_tokens::session_id.eq(session),
            refresh_tokens::expires_at.eq(micros(expires_at)),
            refresh_tokens::created_at.eq(micros(now)),
        ))
        .execute(conn)?;
    Ok(())
}
