//! Hostnames: route one to a target of a tenant, or remove it.

use relay_store::{canonical_hostname, CertificateInfo, Hostname};

use super::{tenants, Actor};
use crate::error::Error;
use crate::AppState;

/// Routes `hostname` to `target` of `tenant` (`hostname.add`, object `tenant/hostname`). Both
/// are canonicalised (lowercase, no trailing dot); a hostname another tenant holds is
/// [`Error::Conflict`], an invalid hostname or target name [`Error::Validation`].
pub(crate) async fn add(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
    target: &str,
) -> Result<Hostname, Error> {
    let t = tenants::find(state, tenant).await?;
    let h = state
        .store()
        .add_hostname(&t.name, hostname, target)
        .await?;
    let object = format!("{}/{}", t.name, h.hostname);
    state.record(actor, "hostname.add", &object).await;
    Ok(h)
}

/// Removes `hostname` from `tenant` (`hostname.remove`, object `tenant/hostname`, canonical):
/// an unknown tenant, or a hostname that is not the tenant's, is [`Error::NotFound`].
pub(crate) async fn remove(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    let hostname = canonical_hostname(hostname).map_err(relay_store::Error::from)?;
    state.store().remove_hostname(&t.name, &hostname).await?;
    let object = format!("{}/{hostname}", t.name);
    state.record(actor, "hostname.remove", &object).await;
    Ok(())
}

/// Marks `hostname` of `tenant` for ACME certificates or not (`hostname.acme_on|acme_off`).
pub(crate) async fn set_acme(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
    on: bool,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    let hostname = canonical_hostname(hostname).map_err(relay_store::Error::from)?;
    state
        .store()
        .set_hostname_acme(&t.name, &hostname, on)
        .await?;
    let action = if on {
        "hostname.acme_on"
    } else {
        "hostname.acme_off"
    };
    state
        .record(actor, action, &format!("{}/{hostname}", t.name))
        .await;
    Ok(())
}

/// Stores an uploaded certificate for `hostname` of `tenant` (`certificate.upload`): a chain or
/// key that does not parse, a key that is not the certificate's, a certificate that does not
/// cover the hostname or has expired is [`Error::Validation`] saying which.
pub(crate) async fn upload_certificate(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertificateInfo, Error> {
    let t = tenants::find(state, tenant).await?;
    let key = state.certificate_key().ok_or_else(|| {
        Error::Internal(
            "certificate uploads need the relays' keys/certificate-key (run the management web \
             with the relays' data_dir)"
                .into(),
        )
    })?;
    let info = state
        .store()
        .set_certificate(&t.name, hostname, chain_pem, key_pem, key)
        .await?;
    state
        .record(
            actor,
            "certificate.upload",
            &format!("{}/{}", t.name, info.hostname),
        )
        .await;
    Ok(info)
}

/// Removes the certificate of `hostname` (`certificate.remove`).
pub(crate) async fn remove_certificate(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    let hostname = canonical_hostname(hostname).map_err(relay_store::Error::from)?;
    state.store().remove_certificate(&t.name, &hostname).await?;
    state
        .record(
            actor,
            "certificate.remove",
            &format!("{}/{hostname}", t.name),
        )
        .await;
    Ok(())
}

/// Asks the relays for a new ACME certificate for `hostname` now (`certificate.renew`).
pub(crate) async fn renew_certificate(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    hostname: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    let hostname = canonical_hostname(hostname).map_err(relay_store::Error::from)?;
    state.store().request_renewal(&t.name, &hostname).await?;
    state
        .record(
            actor,
            "certificate.renew",
            &format!("{}/{hostname}", t.name),
        )
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    #[tokio::test]
    async fn add_canonicalises_and_a_hostname_belongs_to_one_tenant() {
        let (_dir, state) = state().await;
        state.store().create_tenant("acme").await.unwrap();
        state.store().create_tenant("other").await.unwrap();
        let actor = Actor::token("ci");
        let h = add(&state, &actor, "acme", "App.Acme.Example.", "App")
            .await
            .unwrap();
        assert_eq!(
            (h.hostname.as_str(), h.target.as_str()),
            ("app.acme.example", "app")
        );
        let taken = add(&state, &actor, "other", "app.acme.example", "app")
            .await
            .unwrap_err();
        assert!(matches!(taken, Error::Conflict(_)), "{taken:?}");
        for (host, target) in [("nodots", "app"), ("a.example", "a.b")] {
            let e = add(&state, &actor, "acme", host, target).await.unwrap_err();
            assert!(matches!(e, Error::Validation(_)), "{host} {target}: {e:?}");
        }
        let e = add(&state, &actor, "nobody", "x.example", "app")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert_eq!(
            recorded(&state).await,
            [entry("token:ci", "hostname.add", "acme/app.acme.example")]
        );
    }

    #[tokio::test]
    async fn remove_needs_the_hostnames_own_tenant() {
        let (_dir, state) = state().await;
        let store = state.store();
        store.create_tenant("acme").await.unwrap();
        store.create_tenant("other").await.unwrap();
        store
            .add_hostname("acme", "app.acme.example", "app")
            .await
            .unwrap();
        let actor = Actor::user("alice");
        for tenant in ["other", "nobody"] {
            let e = remove(&state, &actor, tenant, "app.acme.example")
                .await
                .unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{tenant}: {e:?}");
        }
        assert_eq!(store.hostnames("acme").await.unwrap().len(), 1);
        let e = remove(&state, &actor, "acme", "not a name")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Validation(_)), "{e:?}");
        remove(&state, &actor, "ACME", "App.Acme.Example.")
            .await
            .unwrap();
        assert!(store.hostnames("acme").await.unwrap().is_empty());
        let twice = remove(&state, &actor, "acme", "app.acme.example")
            .await
            .unwrap_err();
        assert!(matches!(twice, Error::NotFound(_)), "{twice:?}");
        assert_eq!(
            recorded(&state).await,
            [entry(
                "user:alice",
                "hostname.remove",
                "acme/app.acme.example"
            )]
        );
    }
}
