//! Pairing across relay nodes sharing PostgreSQL: which node holds each online peer, the
//! document ids peers joined, and connections waiting for their partner. Every read ignores rows
//! of nodes whose heartbeat is older than `fresh_ms`; [`Store::purge_pairing`] deletes them.

use crate::{now_ms, Backend, Error, Store};

/// A connection waiting on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldElsewhere {
    /// The node holding it.
    pub node_id: String,
    /// Its name.
    pub node_name: String,
    /// Where other nodes reach it (`host:port`).
    pub advertise: String,
}

const LIVE: &str = "SELECT id FROM relay_nodes WHERE heartbeat_at >= ";

impl Store {
    /// Records `peer_id` of a tenant as online on `node_id`. `false`: it is online on another
    /// live node (rows of dead nodes, and this node's own leftovers, are taken over).
    pub async fn claim_pairing_peer(
        &self,
        tenant_id: &str,
        peer_id: &str,
        node_id: &str,
        fresh_ms: i64,
    ) -> Result<bool, Error> {
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query(&format!(
            "INSERT INTO pairing_peers (tenant_id, peer_id, node_id) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, peer_id) DO UPDATE SET node_id = excluded.node_id \
             WHERE pairing_peers.node_id = excluded.node_id \
             OR pairing_peers.node_id NOT IN ({LIVE}$4)"
        ))
        .bind(tenant_id)
        .bind(peer_id)
        .bind(node_id)
        .bind(now_ms().saturating_sub(fresh_ms))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // Document ids a dead node left for this peer id are not this peer's.
        sqlx::query(
            "DELETE FROM pairing_documents WHERE tenant_id = $1 AND peer_id = $2 \
             AND node_id <> $3",
        )
        .bind(tenant_id)
        .bind(peer_id)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets a peer that went offline on `node_id`, with its document ids.
    pub async fn release_pairing_peer(
        &self,
        tenant_id: &str,
        peer_id: &str,
        node_id: &str,
    ) -> Result<(), Error> {
        for table in ["pairing_peers", "pairing_documents"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND peer_id = $2 AND node_id = $3"
            ))
            .bind(tenant_id)
            .bind(peer_id)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Adds (`join`) or removes document ids of an online peer.
    pub async fn set_pairing_documents(
        &self,
        (tenant_id, peer_id, node_id): (&str, &str, &str),
        ids: &[String],
        join: bool,
    ) -> Result<(), Error> {
        let sql = if join {
            "INSERT INTO pairing_documents (tenant_id, document_id, peer_id, node_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM pairing_documents WHERE tenant_id = $1 AND document_id = $2 \
             AND peer_id = $3 AND node_id = $4"
        };
        let mut tx = self.write_transaction().await?;
        for id in ids {
            sqlx::query(sql)
                .bind(tenant_id)
                .bind(id)
                .bind(peer_id)
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The peers on other live nodes sharing document ids with `peer_id` (as recorded on
    /// `node_id`): `(peer id, document id)` pairs.
    pub async fn remote_pairing_matches(
        &self,
        (tenant_id, peer_id, node_id): (&str, &str, &str),
        fresh_ms: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT o.peer_id, o.document_id FROM pairing_documents m \
             JOIN pairing_documents o ON o.tenant_id = m.tenant_id \
             AND o.document_id = m.document_id \
             WHERE m.tenant_id = $1 AND m.peer_id = $2 AND m.node_id = $3 \
             AND o.node_id <> $4 AND o.node_id IN ({LIVE}$5) LIMIT 100000"
        ))
        .bind(tenant_id)
        .bind(peer_id)
        .bind(node_id)
        .bind(node_id)
        .bind(now_ms().saturating_sub(fresh_ms))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The document ids `peer_id` joined, as recorded by the node holding it.
    pub async fn pairing_documents(
        &self,
        tenant_id: &str,
        peer_id: &str,
    ) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT d.document_id FROM pairing_documents d JOIN pairing_peers p \
             ON p.tenant_id = d.tenant_id AND p.peer_id = d.peer_id AND p.node_id = d.node_id \
             WHERE d.tenant_id = $1 AND d.peer_id = $2 ORDER BY d.document_id LIMIT 10000",
        )
        .bind(tenant_id)
        .bind(peer_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// Records connection `(a, b, doc)` as waiting on `node_id`, unless its mirror `(b, a, doc)`
    /// waits on another live node: then that node is returned and nothing is recorded. Both
    /// steps run under one lock per pair (PostgreSQL advisory lock), so two mirrors arriving on
    /// two nodes at once cannot both wait.
    pub async fn hold_or_find_mirror(
        &self,
        (tenant_id, a, b, doc): (&str, &str, &str, &str),
        node_id: &str,
        fresh_ms: i64,
    ) -> Result<Option<HeldElsewhere>, Error> {
        let mut tx = self.write_transaction().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(pair_lock(tenant_id, a, b, doc))
                .execute(&mut *tx)
                .await?;
        }
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT n.id, n.name, n.advertise FROM pairing_held h \
             JOIN relay_nodes n ON n.id = h.node_id \
             WHERE h.tenant_id = $1 AND h.a = $2 AND h.b = $3 AND h.document_id = $4 \
             AND n.id <> $5 AND n.heartbeat_at >= $6",
        )
        .bind(tenant_id)
        .bind(b)
        .bind(a)
        .bind(doc)
        .bind(node_id)
        .bind(now_ms().saturating_sub(fresh_ms))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((node_id, node_name, Some(advertise))) = row {
            tx.commit().await?;
            return Ok(Some(HeldElsewhere {
                node_id,
                node_name,
                advertise,
            }));
        }
        sqlx::query(&format!(
            "INSERT INTO pairing_held (tenant_id, a, b, document_id, node_id) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, a, b, document_id) DO UPDATE SET node_id = excluded.node_id \
             WHERE pairing_held.node_id = excluded.node_id \
             OR pairing_held.node_id NOT IN ({LIVE}$6)"
        ))
        .bind(tenant_id)
        .bind(a)
        .bind(b)
        .bind(doc)
        .bind(node_id)
        .bind(now_ms().saturating_sub(fresh_ms))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(None)
    }

    /// Forgets a waiting connection of `node_id` (matched, closed or timed out).
    pub async fn release_pairing_connection(
        &self,
        (tenant_id, a, b, doc): (&str, &str, &str, &str),
        node_id: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "DELETE FROM pairing_held WHERE tenant_id = $1 AND a = $2 AND b = $3 \
             AND document_id = $4 AND node_id = $5",
        )
        .bind(tenant_id)
        .bind(a)
        .bind(b)
        .bind(doc)
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the pairing rows of nodes whose heartbeat is older than `fresh_ms`.
    pub async fn purge_pairing(&self, fresh_ms: i64) -> Result<(), Error> {
        for table in ["pairing_peers", "pairing_documents", "pairing_held"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE node_id NOT IN ({LIVE}$1)"
            ))
            .bind(now_ms().saturating_sub(fresh_ms))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// On PostgreSQL, calls `on_join(payload)` whenever a node announces a peer's join
    /// ([`Store::announce_pairing`]), and `on_join(None)` after every (re)connect; never returns.
    /// On SQLite it returns at once.
    pub async fn listen_for_pairing(&self, on_join: impl Fn(Option<&str>) + Send) {
        self.listen("relay_pairing", on_join).await
    }

    /// Tells the other nodes about a join (`NOTIFY relay_pairing`; nothing on SQLite). The
    /// payload is the caller's (tenant id, peer id, node id; well under PostgreSQL's 8000 bytes).
    pub async fn announce_pairing(&self, payload: &str) -> Result<(), Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('relay_pairing', $1)")
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

/// The advisory lock of a connection pair: the same for `(a, b)` and `(b, a)`.
fn pair_lock(tenant_id: &str, a: &str, b: &str, doc: &str) -> i64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    crate::advisory_key(&[tenant_id, lo, hi, doc])
}
