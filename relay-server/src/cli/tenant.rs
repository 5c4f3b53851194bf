//! `relay-server tenant …`: tenants, their limits, credentials, hostnames and queue settings.

use anyhow::Context;
use clap::Subcommand;
use relay_store::Store;

use super::queue::{tenant_queue, TenantQueueArgs};
use super::{format_ms, hasher, open_store, CLI_ACTOR};
use crate::config::Config;
use crate::keys::Keys;

/// `tenant …`
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// The tenant's name: a-z, 0-9 and '-', up to 63 characters (stored lowercase).
        name: String,
    },
    /// List tenants.
    List,
    /// Show one tenant.
    Show {
        /// The tenant's name.
        name: String,
    },
    /// Enable a tenant.
    Enable {
        /// The tenant's name.
        name: String,
    },
    /// Disable a tenant (its visitors get 404, its sessions close).
    Disable {
        /// The tenant's name.
        name: String,
    },
    /// Delete a tenant and its credentials.
    Delete {
        /// The tenant's name.
        name: String,
    },
    /// Change a tenant's settings and limits (unset flags keep their values).
    Set {
        /// The tenant's name.
        name: String,
        /// A name for people.
        #[arg(long, value_name = "TEXT")]
        display_name: Option<String>,
        /// Free text for admins.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Keep query strings in this tenant's audit records (true/false; default false).
        #[arg(long, value_name = "BOOL")]
        audit_query_strings: Option<bool>,
        /// Largest request body in bytes (overrides the relay's limits.max_body_bytes).
        #[arg(long, value_name = "BYTES")]
        max_body_bytes: Option<u64>,
        /// Streams in flight at once across the tenant's sessions.
        #[arg(long, value_name = "N")]
        max_concurrent_streams: Option<u32>,
        /// Wait for the response head, e.g. 30s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        request_timeout: Option<std::time::Duration>,
        /// Remove the tenant's own limits (the relay's defaults apply), before applying the above.
        #[arg(long)]
        clear_limits: bool,
        /// Pairing for local-first apps on /pair/NAME/… (docs/pairing.md): off (the default),
        /// open (anyone with the URL) or token (a pairing token in the URL).
        #[arg(long, value_name = "MODE", value_parser = ["off", "open", "token"])]
        pairing: Option<String>,
        /// The tenant's visitor IP lists (docs/policies.md).
        #[command(flatten)]
        ip: super::policy::IpArgs,
    },
    /// Manage a tenant's connector credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Manage the hostnames a tenant owns.
    #[command(subcommand)]
    Hostname(HostnameCommand),
    /// Manage a tenant's pairing tokens (for `--pairing token`).
    #[command(subcommand)]
    PairingToken(PairingTokenCommand),
    /// Manage a tenant's visitor API keys (docs/policies.md).
    #[command(subcommand)]
    ApiKey(super::policy::ApiKeyCommand),
    /// Show or change the tenant's visitor access policies (docs/policies.md).
    #[command(subcommand)]
    Policy(super::policy::PolicyCommand),
    /// Show a tenant's queue settings and its messages by state; with options, change the
    /// settings first (`relay-server queue …` handles the messages).
    Queue(TenantQueueArgs),
}

/// `tenant hostname …`
#[derive(Subcommand, Debug)]
pub enum HostnameCommand {
    /// Route a hostname (e.g. app.contoso.example) to one of the tenant's targets.
    Add {
        /// The tenant.
        tenant: String,
        /// The public DNS name, e.g. app.contoso.example (it belongs to this tenant only).
        hostname: String,
        /// The connector target that serves it.
        #[arg(long, value_name = "TARGET")]
        target: String,
        /// Obtain and renew its certificate from the ACME CA ([acme] in the relay's config).
        #[arg(long)]
        acme: bool,
    },
    /// Turn ACME certificates for a hostname on or off (off keeps the current certificate).
    Acme {
        /// The tenant.
        tenant: String,
        /// The hostname.
        hostname: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// A hostname's certificate: upload one, remove it, or renew an ACME one now.
    #[command(subcommand)]
    Cert(CertCommand),
    /// List a tenant's hostnames.
    List {
        /// The tenant.
        tenant: String,
    },
    /// Remove a hostname.
    Remove {
        /// The tenant.
        tenant: String,
        /// The hostname to remove.
        hostname: String,
    },
}

/// `tenant hostname cert …`
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Serve an uploaded certificate for a hostname (checked: the key is the certificate's, it
    /// covers the hostname and has not expired). Turns ACME off for the hostname.
    Set {
        /// The tenant.
        tenant: String,
        /// The hostname.
        hostname: String,
        /// PEM certificate chain, leaf first.
        #[arg(long, value_name = "FILE")]
        cert: std::path::PathBuf,
        /// PEM private key of the certificate.
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
    },
    /// Remove a hostname's certificate (the relay's own serves it again).
    Remove {
        /// The tenant.
        tenant: String,
        /// The hostname.
        hostname: String,
    },
    /// Obtain a new ACME certificate for the hostname at the relays' next check.
    Renew {
        /// The tenant.
        tenant: String,
        /// The hostname.
        hostname: String,
    },
}

/// `tenant credential …`
#[derive(Subcommand, Debug)]
pub enum CredentialCommand {
    /// Create a credential and print its secret (shown only this once).
    Create {
        /// The tenant.
        tenant: String,
        /// A note for people, e.g. the site or host the connector runs on.
        #[arg(long, value_name = "TEXT", default_value = "")]
        label: String,
    },
    /// List a tenant's credentials (never their secrets).
    List {
        /// The tenant.
        tenant: String,
    },
    /// Revoke a credential; sessions using it close.
    Revoke {
        /// The tenant.
        tenant: String,
        /// The credential's id, as `tenant credential list` shows it.
        id: String,
    },
}

/// `tenant pairing-token …`
#[derive(Subcommand, Debug)]
pub enum PairingTokenCommand {
    /// Create a pairing token and print it (shown only this once); apps put it in their base
    /// URL: wss://RELAY/pair/TENANT/TOKEN.
    Create {
        /// The tenant.
        tenant: String,
        /// Admit only this peer id (the client's peerId).
        #[arg(long, value_name = "ID")]
        peer: Option<String>,
        /// A note for people.
        #[arg(long, value_name = "TEXT", default_value = "")]
        label: String,
    },
    /// List a tenant's pairing tokens (never the tokens themselves).
    List {
        /// The tenant.
        tenant: String,
    },
    /// Revoke a pairing token: new sockets with it are refused (4401).
    Revoke {
        /// The tenant.
        tenant: String,
        /// The token's id, as `tenant pairing-token list` shows it.
        id: String,
    },
}

pub(super) async fn tenant(cmd: TenantCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        TenantCommand::Create { name } => {
            let t = store.create_tenant(&name).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.create", &t.name)
                .await?;
            println!("tenant {} created (id {})", t.name, t.id);
        }
        TenantCommand::List => {
            println!("{:<32} {:<8} ID", "NAME", "ENABLED");
            for t in store.tenants().await? {
                println!("{:<32} {:<8} {}", t.name, t.enabled, t.id);
            }
        }
        TenantCommand::Show { name } => {
            let t = store
                .tenant(&name)
                .await?
                .ok_or_else(|| relay_store::Error::TenantNotFound(name.clone()))?;
            println!(
                "name:     {}\nid:       {}\nenabled:  {}\nlimits:   {:?}\ndisplay:  {}\nabout:    {}\naudit query strings: {}",
                t.name,
                t.id,
                t.enabled,
                t.limits,
                t.display_name,
                t.description,
                t.audit_query_strings
            );
            println!("pairing:  {}", store.pairing_mode(&t.id.0).await?);
            let scopes: Vec<String> = store
                .policies(&t.name)
                .await?
                .into_iter()
                .map(|(scope, _)| scope.to_string())
                .collect();
            if !scopes.is_empty() {
                println!(
                    "policies: {} (relay-server tenant policy show {})",
                    scopes.join(", "),
                    t.name
                );
            }
            for c in store.credentials(&t.name).await? {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("credential {} {state} {}", c.id, c.label);
            }
        }
        TenantCommand::Enable { name } => {
            store.set_tenant_enabled(&name, true).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.enable", &name)
                .await?;
            println!("tenant {name} enabled");
        }
        TenantCommand::Disable { name } => {
            store.set_tenant_enabled(&name, false).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.disable", &name)
                .await?;
            println!("tenant {name} disabled");
        }
        TenantCommand::Set {
            name,
            display_name,
            description,
            audit_query_strings,
            max_body_bytes,
            max_concurrent_streams,
            request_timeout,
            clear_limits,
            pairing,
            ip,
        } => {
            let settings = relay_store::TenantSettings {
                display_name,
                description,
                audit_query_strings,
            };
            let t = store.set_tenant_settings(&name, &settings).await?;
            let mut limits = if clear_limits {
                relay_store::TenantLimits::default()
            } else {
                t.limits.clone()
            };
            if let Some(v) = max_body_bytes {
                limits.max_body_bytes = Some(v);
            }
            if let Some(v) = max_concurrent_streams {
                anyhow::ensure!(v > 0, "--max-concurrent-streams must be at least 1");
                limits.max_concurrent_streams = Some(v);
            }
            if let Some(d) = request_timeout {
                anyhow::ensure!(!d.is_zero(), "--request-timeout must be above zero");
                limits.request_timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
            if limits != t.limits {
                store.set_tenant_limits(&t.name, &limits).await?;
            }
            if let Some(mode) = pairing {
                let mode: relay_store::PairingMode =
                    mode.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                let old = store.set_pairing_mode(&t.name, mode).await?;
                if old != mode {
                    store
                        .record_admin_action(
                            CLI_ACTOR,
                            "tenant.pairing",
                            &format!("{}: {old} -> {mode}", t.name),
                        )
                        .await?;
                }
                println!("pairing: {mode}");
            }
            super::policy::set_tenant_ip(&store, &t.name, &ip).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.update", &t.name)
                .await?;
            println!("tenant {} updated", t.name);
        }
        TenantCommand::Delete { name } => {
            store.delete_tenant(&name).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.delete", &name)
                .await?;
            println!("tenant {name} deleted");
        }
        TenantCommand::Credential(CredentialCommand::Create { tenant, label }) => {
            let hasher = hasher(config)?;
            let c = store.create_credential(&tenant, &label, &hasher).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "credential.create",
                    &format!("{}/{}", c.credential.tenant, c.credential.id),
                )
                .await?;
            println!(
                "credential {} created for tenant {}",
                c.credential.id, c.credential.tenant
            );
            println!("secret (shown once, store it in the connector's --secret-file):");
            println!("{}", c.secret);
        }
        TenantCommand::Credential(CredentialCommand::List { tenant }) => {
            println!("{:<34} {:<8} LABEL", "ID", "STATE");
            for c in store.credentials(&tenant).await? {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{:<34} {:<8} {}", c.id, state, c.label);
            }
        }
        TenantCommand::Hostname(HostnameCommand::Add {
            tenant,
            hostname,
            target,
            acme,
        }) => {
            let h = store.add_hostname(&tenant, &hostname, &target).await?;
            if acme {
                store.set_hostname_acme(&tenant, &h.hostname, true).await?;
            }
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "hostname.add",
                    &format!("{tenant}/{}", h.hostname),
                )
                .await?;
            println!("{} -> tenant {tenant}, target {}", h.hostname, h.target);
            if acme {
                println!("certificate: from ACME (when [acme] is enabled on the relays)");
            }
        }
        TenantCommand::Hostname(HostnameCommand::List { tenant }) => {
            let certs = store.certificates(&tenant).await?;
            println!("{:<40} {:<16} CERTIFICATE", "HOSTNAME", "TARGET");
            for h in store.hostnames(&tenant).await? {
                let cert = certs.iter().find(|c| c.hostname == h.hostname);
                let cert = match (cert, h.acme) {
                    (Some(c), _) => {
                        format!("{}, expires {}", c.source.as_str(), format_ms(c.not_after))
                    }
                    (None, true) => "acme, pending".to_string(),
                    (None, false) => "relay's own".to_string(),
                };
                println!("{:<40} {:<16} {cert}", h.hostname, h.target);
            }
        }
        TenantCommand::Hostname(HostnameCommand::Acme {
            tenant,
            hostname,
            state,
        }) => {
            let on = state == "on";
            store.set_hostname_acme(&tenant, &hostname, on).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    if on {
                        "hostname.acme_on"
                    } else {
                        "hostname.acme_off"
                    },
                    &format!("{tenant}/{hostname}"),
                )
                .await?;
            println!("ACME certificates for {hostname}: {state}");
        }
        TenantCommand::Hostname(HostnameCommand::Cert(cmd)) => {
            certificate(cmd, &store, config).await?
        }
        TenantCommand::Hostname(HostnameCommand::Remove { tenant, hostname }) => {
            store.remove_hostname(&tenant, &hostname).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "hostname.remove",
                    &format!("{tenant}/{hostname}"),
                )
                .await?;
            println!("hostname {hostname} removed");
        }
        TenantCommand::Credential(CredentialCommand::Revoke { tenant, id }) => {
            store.revoke_credential(&tenant, &id).await?;
            store
                .record_admin_action(CLI_ACTOR, "credential.revoke", &format!("{tenant}/{id}"))
                .await?;
            println!("credential {id} revoked; its sessions close within a second");
        }
        TenantCommand::PairingToken(cmd) => pairing_token(cmd, &store, config).await?,
        TenantCommand::Queue(args) => tenant_queue(args, &store, config).await?,
        TenantCommand::ApiKey(cmd) => super::policy::api_key(cmd, &store, config).await?,
        TenantCommand::Policy(cmd) => super::policy::policy(cmd, &store).await?,
    }
    Ok(())
}

async fn pairing_token(
    cmd: PairingTokenCommand,
    store: &relay_store::Store,
    config: &Config,
) -> anyhow::Result<()> {
    match cmd {
        PairingTokenCommand::Create {
            tenant,
            peer,
            label,
        } => {
            let hasher = hasher(config)?;
            let t = store
                .create_pairing_token(&tenant, peer.as_deref(), &label, &hasher)
                .await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "pairing_token.create",
                    &format!("{}/{}", t.token.tenant, t.token.id),
                )
                .await?;
            let bound = t.token.peer_id.as_deref().unwrap_or("any peer id");
            println!(
                "pairing token {} created for tenant {} ({bound})",
                t.token.id, t.token.tenant
            );
            let mode = match store.tenant(&t.token.tenant).await? {
                Some(tn) => store.pairing_mode(&tn.id.0).await?,
                None => relay_store::PairingMode::Off,
            };
            if mode != relay_store::PairingMode::Token {
                println!(
                    "note: pairing is {mode} for this tenant; tokens count only with \
                     `tenant set {} --pairing token`",
                    t.token.tenant
                );
            }
            println!(
                "token (shown once; the app's base URL is wss://RELAY/pair/{}/TOKEN):",
                t.token.tenant
            );
            println!("{}", t.value);
        }
        PairingTokenCommand::List { tenant } => {
            println!("{:<34} {:<8} {:<24} LABEL", "ID", "STATE", "PEER");
            for t in store.pairing_tokens(&tenant).await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let peer = t.peer_id.as_deref().unwrap_or("*");
                println!("{:<34} {:<8} {:<24} {}", t.id, state, peer, t.label);
            }
        }
        PairingTokenCommand::Revoke { tenant, id } => {
            store.revoke_pairing_token(&tenant, &id).await?;
            store
                .record_admin_action(CLI_ACTOR, "pairing_token.revoke", &format!("{tenant}/{id}"))
                .await?;
            println!("pairing token {id} revoked; new sockets with it are refused");
        }
    }
    Ok(())
}

/// `tenant hostname cert …`
async fn certificate(cmd: CertCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Set {
            tenant,
            hostname,
            cert,
            key,
        } => {
            let read = |p: &std::path::Path, max: usize| -> anyhow::Result<String> {
                let meta =
                    std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
                anyhow::ensure!(
                    meta.len() <= max as u64,
                    "{} is over {max} bytes",
                    p.display()
                );
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let chain = read(&cert, relay_store::MAX_CHAIN_PEM_BYTES)?;
            let key_pem = read(&key, relay_store::MAX_KEY_PEM_BYTES)?;
            let sealing = Keys::load_or_create(&config.data_dir)?.certificate_key();
            let info = store
                .set_certificate(&tenant, &hostname, &chain, &key_pem, &sealing)
                .await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "certificate.upload",
                    &format!("{tenant}/{}", info.hostname),
                )
                .await?;
            println!(
                "certificate for {} stored (serial {}, expires {})",
                info.hostname,
                info.serial,
                format_ms(info.not_after)
            );
        }
        CertCommand::Remove { tenant, hostname } => {
            store.remove_certificate(&tenant, &hostname).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "certificate.remove",
                    &format!("{tenant}/{hostname}"),
                )
                .await?;
            println!("certificate for {hostname} removed");
        }
        CertCommand::Renew { tenant, hostname } => {
            store.request_renewal(&tenant, &hostname).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "certificate.renew",
                    &format!("{tenant}/{hostname}"),
                )
                .await?;
            println!("renewal of {hostname} requested: the relays obtain a new certificate at their next check");
        }
    }
    Ok(())
}
