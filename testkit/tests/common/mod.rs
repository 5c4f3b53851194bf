//! What several end-to-end test files share. Each test binary compiles this module itself, so
//! a helper one binary does not use would be dead code there.
#![allow(dead_code)]

use connector::testing::connector;
use testkit::{trace_init, Backend, Client};

/// A relay with tenant `acme`, one connector serving target `app` from one backend, a client.
pub(crate) struct Setup {
    pub(crate) relay: relay_server::testing::RelayHandle,
    pub(crate) backend: Backend,
    pub(crate) conn: connector::testing::ConnectorHandle,
    pub(crate) client: Client,
}

/// Starts `builder`'s relay, provisions `acme`, and connects one connector to a fresh backend.
pub(crate) async fn setup(builder: relay_server::testing::Builder) -> Setup {
    trace_init();
    let relay = builder.spawn().await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    let client = Client::new(&relay.ca_cert());
    Setup {
        relay,
        backend,
        conn,
        client,
    }
}

/// A relay on the PostgreSQL cluster at `url`.
pub(crate) fn on_postgres(url: &str) -> relay_server::testing::Builder {
    let url = url.to_string();
    relay_server::testing::relay().configure(move |f| f.database_url = Some(url))
}
