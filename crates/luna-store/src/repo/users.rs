//! Users (`users`) and their login sessions (`sessions`, `refresh_tokens`):
//! passwords and refresh tokens are kept only as hashes, and any change of a
//! user ends every session it has.

use diesel::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::{from_micros, micros, uuid};
use crate::db::DbConnection;
use crate::error::Result;
use crate::models::UserRow;
use crate::repo::conflict_on_unique;
use crate::schema::{refresh_tokens, sessions, users};
use crate::{AuditEntry, Durability, Store};

/// A user as stored: the password only as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub groups: Vec<String>,
    pub created_at: OffsetDateTime,
}

/// A change of a user; each ends every session the user has.
#[derive(Debug, Clone, Copy)]
pub enum UserChange<'a> {
    /// An administrator sets the password (hash).
    Password { hash: &'a str },
    /// The user sets their own, having proven the current one: applied only
    /// while the stored hash is still `proven` (an administrator's reset in
    /// between wins).
    OwnPassword { proven: &'a str, hash: &'a str },
    /// The groups become `to`, applied only while they are still `from`.
    Groups { from: &'a [String], to: &'a [String] },
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
    /// Adds a user, and `audit` about it; a taken name is a conflict. Group
    /// names are one per line.
    pub fn insert_user(&self, user: &NewUser, now: OffsetDateTime, audit: &AuditEntry) -> Result<StoredUser> {
        let row = UserRow {
            id: Uuid::new_v4().to_string(),
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            user_groups: user.groups.join("\n"),
            created_at: micros(now),
            updated_at: micros(now),
        };
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::insert_into(users::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(|| {
                    format!("a user named {:?} already exists", row.username)
                }))?;
            pending.audit.push(audit.about(&row.id));
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

    /// Changes a user and ends every session it has (their refresh tokens
    /// go with them), in one transaction. False, with nothing changed, if
    /// there is no such user, or if what the change was worked out from no
    /// longer holds (a compare-and-set: two changes racing do not overwrite
    /// each other unseen). `audit` is written with a change.
    pub fn change_user(
        &self,
        id: Uuid,
        change: &UserChange<'_>,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let key = id.to_string();
        let stamp = users::updated_at.eq(micros(now));
        self.write_with(Durability::Synced, |conn, pending| {
            let user = users::table.find(&key);
            let updated = match change {
                UserChange::Password { hash } => diesel::update(user)
                    .set((users::password_hash.eq(*hash), stamp))
                    .execute(conn)?,
                UserChange::OwnPassword { proven, hash } => {
                    diesel::update(user.filter(users::password_hash.eq(*proven)))
                        .set((users::password_hash.eq(*hash), stamp))
                        .execute(conn)?
                }
                UserChange::Groups { from, to } => {
                    diesel::update(user.filter(users::user_groups.eq(from.join("\n"))))
                        .set((users::user_groups.eq(to.join("\n")), stamp))
                        .execute(conn)?
                }
            };
            if updated == 1 {
                diesel::delete(sessions::table.filter(sessions::user_id.eq(&key))).execute(conn)?;
                pending.audit.push(audit.clone());
            }
            Ok(updated == 1)
        })
    }

    /// Deletes a user, and writes `audit`; its sessions and refresh tokens
    /// go with it. False if there was none.
    pub fn delete_user(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        self.write_with(Durability::Synced, |conn, pending| {
            let deleted = diesel::delete(users::table.find(id.to_string())).execute(conn)? == 1;
            if deleted {
                pending.audit.push(audit.clone());
            }
            Ok(deleted)
        })
    }

    /// Opens a session for a user who logged in, as `user` was read when
    /// their password was checked, with its first refresh token (kept by its
    /// hash: the token itself is never stored). `None` if the user's password
    /// or groups changed since, or the user is gone: a session opened then
    /// would outlive the change that was to end every session. Sessions whose
    /// last refresh token has expired are pruned on the way. `audit` (the
    /// login) is written with the session, about it.
    pub fn open_session(
        &self,
        user: &StoredUser,
        token_hash: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Uuid>> {
        let session = Uuid::new_v4();
        let id = session.to_string();
        let user_id = user.id.to_string();
        let groups = user.groups.join("\n");
        let opened = self.write_with(Durability::Synced, |conn, pending| {
            // Compared and locked in one statement: a change of the user
            // (`change_user`) either commits first, and this finds nothing,
            // or waits for this session and then ends it.
            let unchanged = diesel::update(
                users::table
                    .find(&user_id)
                    .filter(users::password_hash.eq(&user.password_hash))
                    .filter(users::user_groups.eq(&groups)),
            )
            .set(users::password_hash.eq(&user.password_hash))
            .execute(conn)?;
            if unchanged == 0 {
                return Ok(false);
            }
            diesel::delete(sessions::table.filter(sessions::expires_at.lt(micros(now)))).execute(conn)?;
            diesel::insert_into(sessions::table)
                .values((
                    sessions::id.eq(&id),
                    sessions::user_id.eq(&user_id),
                    sessions::created_at.eq(micros(now)),
                    sessions::expires_at.eq(micros(expires_at)),
                ))
                .execute(conn)?;
            insert_refresh_token(conn, &id, token_hash, expires_at, now)?;
            pending.audit.push(audit.about(&id));
            Ok(true)
        })?;
        Ok(opened.then_some(session))
    }

    /// Trades a refresh token for the next one in its session: the presented
    /// token is deleted whatever happens (it works once, so a stolen copy
    /// races its owner), and if it had not expired and its session is still
    /// open, `next_hash` is stored in its place. Returns the user and session.
    /// `audit` is written with a refresh that succeeds, by the session's
    /// user, about the session.
    pub fn refresh_session(
        &self,
        token_hash: &str,
        next_hash: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<(StoredUser, Uuid)>> {
        self.write_with(Durability::Synced, |conn, pending| {
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
            if token_expires_at <= micros(now) {
                diesel::delete(refresh_tokens::table.find(token_hash)).execute(conn)?;
                return Ok(None);
            }
            // Rows are locked session first, then token, the order in which
            // ending a session deletes them (its tokens go by cascade), so a
            // refresh and a logout racing on PostgreSQL wait for each other
            // instead of deadlocking. The writes decide, not the read: a
            // concurrent refresh of the same token, or the session's end, may
            // have deleted a row since (these statements then wait for that
            // transaction and find nothing).
            let open = diesel::update(sessions::table.find(&session))
                .set(sessions::expires_at.eq(micros(expires_at)))
                .execute(conn)?;
            let taken = diesel::delete(refresh_tokens::table.find(token_hash)).execute(conn)?;
            if open == 0 || taken == 0 {
                return Ok(None);
            }
            let Some(user) = user_by(conn, &user_id)? else {
                return Ok(None);
            };
            insert_refresh_token(conn, &session, next_hash, expires_at, now)?;
            pending
                .audit
                .push(audit.by(&user.id.to_string(), &user.username).about(&session));
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
    /// tokens naming it are refused from then on, and `audit` is written.
    /// False if it was not open.
    pub fn end_session(&self, session: Uuid, audit: &AuditEntry) -> Result<bool> {
        self.write_with(Durability::Synced, |conn, pending| {
            let ended = diesel::delete(sessions::table.find(session.to_string())).execute(conn)? == 1;
            if ended {
                pending.audit.push(audit.clone());
            }
            Ok(ended)
        })
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
