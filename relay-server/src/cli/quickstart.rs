//! `relay-server quickstart`: a relay, a demo tenant and an in-process connector with the
//! built-in echo target, for the README's one command. Behind the default `quickstart` feature:
//! it is the relay's only use of the `connector` crate.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{hasher, open_store, random_token};
use crate::config::Config;
use crate::keys;
use crate::{run, Listeners};

/// The quickstart: relay + demo tenant + in-process connector with the echo target.
pub(super) async fn quickstart(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let dir = config.data_dir.join("quickstart");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if store.tenant("demo").await?.is_none() {
        store.create_tenant("demo").await?;
    }
    let secret_path = dir.join("demo-connector.secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let c = store
                .create_credential("demo", "quickstart", &hasher(&config)?)
                .await?;
            write_private(&secret_path, &c.secret)?;
            c.secret
        }
    };
    let password_path = dir.join("admin-password");
    let password = match std::fs::read_to_string(&password_path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ if store.admin_user_exists("admin").await? => {
            "(set earlier; not stored here)".to_string()
        }
        _ => {
            let p = random_token(18);
            store.create_admin_user("admin", &p).await?;
            write_private(&password_path, &p)?;
            p
        }
    };

    let listeners = Listeners::bind(&config).await?;
    let addrs = listeners.addrs();
    let https = addrs.https.context("no HTTPS address")?;
    let host = if https.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        https.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{host}:{}", https.port()));
    let self_signed = config.tls.is_none();
    let cert_path = keys::self_signed_cert_path(&config.data_dir);

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(run(
        config.clone(),
        store,
        listeners,
        relay_shutdown.clone(),
        Some(started_tx),
    ));
    let _view = started_rx.await.context("relay failed to start")?;

    let backend_stop = CancellationToken::new();
    let echo = crate::echo::spawn(backend_stop.clone()).await?;
    let mut file = connector::config::FileConfig {
        server: Some(format!("https://{host}:{}", https.port())),
        tenant: Some("demo".into()),
        secret: Some(process_setup::layered::Secret::new(secret)),
        ..Default::default()
    };
    if self_signed {
        file.ca_cert = Some(cert_path.clone());
    }
    file.targets.insert(
        "echo".into(),
        connector::config::TargetFile {
            url: format!("http://{echo}"),
            ..Default::default()
        },
    );
    let conn_config =
        connector::Config::from_file(file, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let conn = connector::Connector::new(conn_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut state = conn.watch();
    let conn_shutdown = CancellationToken::new();
    let conn_task = tokio::spawn(conn.run(conn_shutdown.clone()));
    // The watch guard must not outlive this statement: it would block the connector's updates.
    let connected = matches!(
        tokio::time::timeout(Duration::from_secs(15), state.wait_for(|s| s.connected)).await,
        Ok(Ok(_))
    );
    if !connected {
        tracing::warn!("the demo connector is not connected yet; requests get 503 until it is");
    }

    let cacert = if self_signed {
        format!("--cacert {} ", display_path(&cert_path))
    } else {
        String::new()
    };
    println!();
    println!(
        "Relay is running (data in {}).",
        display_path(&config.data_dir)
    );
    println!();
    println!("  Public URL:      {base}/relay/demo/echo/");
    println!("  Try it:          curl {cacert}{base}/relay/demo/echo/hello");
    if let Some(admin) = addrs.admin {
        println!("  Management web:  http://{admin}/   (login: admin / {password})");
    }
    println!("  Connector:       tenant \"demo\", target \"echo\" -> built-in echo backend");
    println!();
    println!("Press Ctrl-C to stop.");

    shutdown.cancelled().await;
    conn_shutdown.cancel();
    relay_shutdown.cancel();
    let _ = conn_task.await;
    let result = relay.await.context("relay task panicked")?;
    backend_stop.cancel();
    result
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
