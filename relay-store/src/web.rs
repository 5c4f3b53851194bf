//! What the management web keeps: admin logins checked against argon2id hashes, and login
//! sessions whose cookie value is stored only as a SHA-256.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::password::{self, DUMMY_HASH};
use crate::{now_ms, AdminUser, Error, Store};

/// A login session as the web sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Who is logged in.
    pub user: AdminUser,
    /// The token every state-changing form must carry.
    pub csrf: String,
    /// When it ends, ms since the epoch.
    pub expires_at: i64,
}

/// A session just created: the cookie value exists only here and in the browser.
#[derive(Debug, Clone)]
pub struct NewWebSession {
    /// The cookie value (256 random bits).
    pub cookie: String,
    /// The session.
    pub session: WebSession,
}

fn random(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    // The system RNG failing is not recoverable: never hand out a weak session id.
    aws_lc_rs::rand::fill(&mut b).expect("system random number generator failed");
    URL_SAFE_NO_PAD.encode(b)
}

fn id_hash(cookie: &str) -> String {
    let d = digest::digest(&digest::SHA256, cookie.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    csrf: String,
    expires_at: i64,
    user_id: String,
    username: String,
    user_created_at: i64,
}

impl Store {
    /// The admin user `username` if `password` is theirs. The argon2id check runs under the
    /// process's hashing bound ([`crate::password_hash_permits`] at once, one reused 19 MiB
    /// buffer each); [`Error::HashingBusy`] when no slot frees up within 2 s. An unknown user
    /// costs the same check against a dummy hash (no user enumeration by timing).
    pub async fn verify_admin_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<AdminUser>, Error> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT id, password_hash, created_at FROM admin_users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let hash = row.as_ref().map_or(DUMMY_HASH, |r| r.1.as_str());
        let ok = password::verify(password, hash).await?;
        Ok(match row {
            Some((id, _, created_at)) if ok => Some(AdminUser {
                id,
                username: username.to_string(),
                created_at,
            }),
            _ => None,
        })
    }

    /// Starts a session for `user` lasting `ttl_ms`; expired sessions are purged on the way.
    pub async fn create_web_session(
        &self,
        user: &AdminUser,
        ttl_ms: i64,
    ) -> Result<NewWebSession, Error> {
        let now = now_ms();
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let cookie = random(32);
        let csrf = random(32);
        let expires_at = now.saturating_add(ttl_ms);
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash(&cookie))
        .bind(&user.id)
        .bind(&csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(NewWebSession {
            cookie,
            session: WebSession {
                user: user.clone(),
                csrf,
                expires_at,
            },
        })
    }

    /// The live session a cookie value belongs to.
    pub async fn web_session(&self, cookie: &str) -> Result<Option<WebSession>, Error> {
        let row = sqlx::query_as::<_, SessionRow>(
            "SELECT s.csrf, s.expires_at, u.id AS user_id, u.username, u.created_at AS user_created_at \
             FROM web_sessions s JOIN admin_users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash(cookie))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| WebSession {
            user: AdminUser {
                id: r.user_id,
                username: r.username,
                created_at: r.user_created_at,
            },
            csrf: r.csrf,
            expires_at: r.expires_at,
        }))
    }

    /// Ends a session (logout); unknown values are ignored.
    pub async fn delete_web_session(&self, cookie: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash(cookie))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
