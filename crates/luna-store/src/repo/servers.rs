//! Luna Network HSM servers (`hsm_servers`), which connections may name.

use diesel::prelude::*;
use luna_domain::query::{Direction, ListQuery, ServerFilters, ServerSortField};
use luna_domain::HsmServer;
use uuid::Uuid;

use crate::db::{DbConnection, MultiBackend};
use crate::error::{Result, StoreError};
use crate::models::ServerRow;
use crate::repo::{conflict_on_reference, conflict_on_unique, order_by};
use crate::schema::{connections, hsm_servers};
use crate::{AuditEntry, Durability, Listed, Store};

fn filtered(f: &ServerFilters) -> hsm_servers::BoxedQuery<'static, MultiBackend> {
    let mut q = hsm_servers::table.into_boxed();
    if let Some(v) = &f.host {
        q = q.filter(hsm_servers::hostname.eq(v.clone()));
    }
    if let Some(v) = f.id {
        q = q.filter(hsm_servers::id.eq(v.to_string()));
    }
    if let Some(v) = f.products {
        // `products` is a comma list: the name alone, first, last or between.
        let name = v.as_str();
        q = q.filter(
            hsm_servers::products
                .eq(name)
                .or(hsm_servers::products.like(format!("{name},%")))
                .or(hsm_servers::products.like(format!("%,{name}")))
                .or(hsm_servers::products.like(format!("%,{name},%"))),
        );
    }
    if f.channel == Some(luna_domain::server::Channel::Stc) {
        // Every server here is reached over NTLS.
        q = q.filter(hsm_servers::id.is_null());
    }
    q
}

/// Refuses a connection naming a server that is not registered (inside the
/// connection's insert; the foreign key holds it against a delete racing it).
pub(crate) fn require_server(conn: &mut DbConnection, id: &str) -> Result<()> {
    let found: i64 = hsm_servers::table.find(id).count().get_result(conn)?;
    if found == 0 {
        return Err(StoreError::Domain(luna_domain::server::no_such_server(id)));
    }
    Ok(())
}

impl Store {
    /// Registers an HSM server, and writes `audit` about it; a hostname
    /// registered already is a conflict.
    pub fn insert_server(&self, server: &HsmServer, audit: &AuditEntry) -> Result<()> {
        let row = ServerRow::from_domain(server);
        self.write_with(Durability::Synced, |conn, pending| {
            diesel::insert_into(hsm_servers::table)
                .values(&row)
                .execute(conn)
                .map_err(conflict_on_unique(|| {
                    format!(
                        "an HSM server with hostname {:?} is registered already",
                        row.hostname
                    )
                }))?;
            pending.audit.push(audit.about(&row.id));
            Ok(())
        })
    }

    pub fn get_server(&self, id: Uuid) -> Result<Option<HsmServer>> {
        self.read(|conn| {
            hsm_servers::table
                .find(id.to_string())
                .select(ServerRow::as_select())
                .first(conn)
                .optional()?
                .map(ServerRow::into_domain)
                .transpose()
        })
    }

    pub fn list_servers(&self, query: &ListQuery<ServerFilters>) -> Result<Listed<HsmServer>> {
        self.read(|conn| {
            let total: i64 = filtered(&query.filters).count().get_result(conn)?;
            let mut q = filtered(&query.filters);
            if query.sort.is_empty() {
                q = q.order_by((hsm_servers::created_at.desc(), hsm_servers::id.desc()));
            } else {
                for key in &query.sort {
                    q = match key.field {
                        ServerSortField::CreatedAt => order_by!(q, key.direction, hsm_servers::created_at),
                        ServerSortField::UpdatedAt => order_by!(q, key.direction, hsm_servers::updated_at),
                        ServerSortField::Hostname => order_by!(q, key.direction, hsm_servers::hostname),
                    };
                }
                q = order_by!(q, Direction::Ascending, hsm_servers::id);
            }
            let items = q
                .offset(query.page.skip)
                .limit(query.page.limit)
                .select(ServerRow::as_select())
                .load(conn)?
                .into_iter()
                .map(ServerRow::into_domain)
                .collect::<Result<Vec<_>>>()?;
            Ok(Listed { total, items })
        })
    }

    /// Deletes a server, and writes `audit`; a conflict while a connection
    /// names it.
    pub fn delete_server(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let id = id.to_string();
        self.write_with(Durability::Synced, |conn, pending| {
            let users: Vec<String> = connections::table
                .filter(connections::server_id.eq(&id))
                .select(connections::name)
                .limit(3)
                .load(conn)?;
            if !users.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "the HSM server is named by connection {}; delete or change those first",
                    users.join(", ")
                )));
            }
            let deleted = diesel::delete(hsm_servers::table.find(&id))
                .execute(conn)
                .map_err(conflict_on_reference(|| {
                    "a connection named the HSM server meanwhile; delete or change it first".into()
                }))?;
            if deleted == 1 {
                pending.audit.push(audit.clone());
            }
            Ok(deleted == 1)
        })
    }
}
