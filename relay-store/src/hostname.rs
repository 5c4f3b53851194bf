//! Hostnames a tenant owns (`app.contoso.example` → tenant `contoso`, target `app`).

use crate::{is_unique_violation, now_ms, validate_name, Error, Store, TenantId};

/// A hostname route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname {
    /// The canonical hostname (lowercase, no trailing dot, no port).
    pub hostname: String,
    /// The owning tenant.
    pub tenant_id: TenantId,
    /// The target it serves.
    pub target: String,
    /// Whether the relays obtain its certificate from the ACME CA (docs/certificates.md).
    pub acme: bool,
}

/// A hostname that is not a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid hostname {0:?}: use a DNS name such as app.example.com (letters, digits, '-', dots)"
)]
pub struct HostnameError(pub String);

/// Whether `label` is one DNS label of a canonical (lowercase, ASCII or punycode) host name:
/// 1–63 of `a-z`, `0-9` and `-`, not starting or ending with `-`.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Canonicalises a hostname: lowercase, one trailing dot removed; labels of 1–63 characters
/// `[a-z0-9-]` not starting or ending with `-`, at least two labels, at most 253 characters.
/// Ports are not part of a hostname (the relay strips them from `Host` before looking up).
pub fn canonical_hostname(name: &str) -> Result<String, HostnameError> {
    let lower = name.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    let labels: Vec<&str> = host.split('.').collect();
    if host.len() <= 253 && labels.len() >= 2 && labels.iter().all(|l| valid_label(l)) {
        Ok(host.to_string())
    } else {
        Err(HostnameError(name.to_string()))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct HostnameRow {
    hostname: String,
    tenant_id: String,
    target: String,
    acme: i64,
}

pub(crate) const SELECT_ALL: &str =
    "SELECT hostname, tenant_id, target, acme FROM hostnames ORDER BY hostname";

impl From<HostnameRow> for Hostname {
    fn from(r: HostnameRow) -> Hostname {
        Hostname {
            hostname: r.hostname,
            tenant_id: TenantId(r.tenant_id),
            target: r.target,
            acme: r.acme != 0,
        }
    }
}

impl Store {
    /// Routes `hostname` to `target` of `tenant`. A hostname belongs to one tenant only.
    pub async fn add_hostname(
        &self,
        tenant: &str,
        hostname: &str,
        target: &str,
    ) -> Result<Hostname, Error> {
        let hostname = canonical_hostname(hostname)?;
        let target = validate_name(target)?;
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        let result = sqlx::query(
            "INSERT INTO hostnames (hostname, tenant_id, target, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&hostname)
        .bind(&t.id.0)
        .bind(&target)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Hostname {
                hostname,
                tenant_id: t.id,
                target,
                acme: false,
            }),
            Err(e) if is_unique_violation(&e) => Err(Error::HostnameTaken(hostname)),
            Err(e) => Err(e.into()),
        }
    }

    /// The hostnames of a tenant.
    pub async fn hostnames(&self, tenant: &str) -> Result<Vec<Hostname>, Error> {
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        let rows = sqlx::query_as::<_, HostnameRow>(
            "SELECT hostname, tenant_id, target, acme FROM hostnames WHERE tenant_id = $1 ORDER BY hostname",
        )
        .bind(&t.id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Hostname::from).collect())
    }

    /// Removes a hostname of a tenant.
    pub async fn remove_hostname(&self, tenant: &str, hostname: &str) -> Result<(), Error> {
        let hostname = canonical_hostname(hostname)?;
        let done = sqlx::query(
            "DELETE FROM hostnames WHERE hostname = $1 AND tenant_id = (SELECT id FROM tenants WHERE name = $2)",
        )
        .bind(&hostname)
        .bind(tenant.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::HostnameNotFound(hostname));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_and_validates() {
        assert_eq!(
            canonical_hostname("App.Contoso.Example.").unwrap(),
            "app.contoso.example"
        );
        assert_eq!(
            canonical_hostname("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b:443",
            "a b.c",
            "ä.b",
            &format!("{}.b", "a".repeat(64)),
        ] {
            assert!(canonical_hostname(bad).is_err(), "{bad:?}");
        }
    }
}
