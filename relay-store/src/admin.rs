//! Admin users of the management web, with argon2id password hashes.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::{is_unique_violation, now_ms, Error, Store};

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

/// argon2id with the OWASP minimum: m = 19 MiB, t = 2, p = 1.
pub(crate) fn argon2() -> Argon2<'static> {
    // The parameters are constants inside the documented ranges, so this cannot fail.
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Store {
    /// Creates an admin user with `password` (hashed with argon2id on a blocking thread).
    pub async fn create_admin_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<AdminUser, Error> {
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|_| Error::PasswordHash)?
        .map_err(|_| Error::PasswordHash)?;
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
