//! Admin users of the management web, with argon2id password hashes.

use crate::{is_unique_violation, now_ms, password, Error, Store};

/// An admin user (the hash stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// Its id.
    pub id: String,
    /// The login name.
    pub username: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

impl Store {
    /// Creates an admin user with `password`, hashed with argon2id under the process's hashing
    /// bound (see [`crate::password_hash_permits`]); [`Error::HashingBusy`] when no slot frees
    /// up within 2 s.
    pub async fn create_admin_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<AdminUser, Error> {
        let hash = password::hash(password).await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO admin_users (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(username)
        .bind(&hash)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(AdminUser {
                id,
                username: username.to_string(),
                created_at: now,
            }),
            Err(e) if is_unique_violation(&e) => Err(Error::AdminUserExists(username.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an admin user named `username` exists.
    pub async fn admin_user_exists(&self, username: &str) -> Result<bool, Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM admin_users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}
