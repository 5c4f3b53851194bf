//! `relay-server admin …`: admin users, API tokens and the admin-action log.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{format_ms, hasher, open_store, random_token, CLI_ACTOR};
use crate::config::Config;

/// `admin …`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Manage admin users.
    #[command(subcommand)]
    User(AdminUserCommand),
    /// Manage API tokens for the management API.
    #[command(subcommand)]
    Token(AdminTokenCommand),
    /// Show the newest admin actions (who changed what).
    Log {
        /// How many, newest first.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
}

/// `admin token …`
#[derive(Subcommand, Debug)]
pub enum AdminTokenCommand {
    /// Create an API token; it is printed once.
    Create {
        /// A unique name for the token (letters, digits, '-'), e.g. ci-deploy.
        name: String,
    },
    /// List API tokens (never their values).
    List,
    /// Revoke an API token by id or name.
    Revoke {
        /// The token's id or name, as `admin token list` shows them.
        token: String,
    },
}

/// `admin user …`
#[derive(Subcommand, Debug)]
pub enum AdminUserCommand {
    /// Create an admin user; a password is generated and printed unless --password-file is given.
    Create {
        /// The login name.
        username: String,
        /// Read the password (at least 12 characters) from this file instead of generating one.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

/// Runs an `admin` command.
pub(super) async fn admin(cmd: AdminCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::User(AdminUserCommand::Create {
            username,
            password_file,
        }) => {
            let store = open_store(config).await?;
            let (password, generated) = match password_file {
                Some(p) => (
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim()
                        .to_string(),
                    false,
                ),
                None => (random_token(18), true),
            };
            anyhow::ensure!(
                password.len() >= 12,
                "the password must have at least 12 characters"
            );
            store.create_admin_user(&username, &password).await?;
            store
                .record_admin_action(CLI_ACTOR, "admin_user.create", &username)
                .await?;
            println!("admin user {username} created");
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        AdminCommand::Token(cmd) => {
            let store = open_store(config).await?;
            match cmd {
                AdminTokenCommand::Create { name } => {
                    let t = store.create_api_token(&name, &hasher(config)?).await?;
                    store
                        .record_admin_action(CLI_ACTOR, "api_token.create", &t.token.name)
                        .await?;
                    println!("API token {} created (id {})", t.token.name, t.token.id);
                    println!("token (shown once; send it as `Authorization: Bearer <token>`):");
                    println!("{}", t.value);
                }
                AdminTokenCommand::List => {
                    println!("{:<34} {:<8} NAME", "ID", "STATE");
                    for t in store.api_tokens().await? {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!("{:<34} {:<8} {}", t.id, state, t.name);
                    }
                }
                AdminTokenCommand::Revoke { token } => {
                    let t = store.revoke_api_token(&token).await?;
                    store
                        .record_admin_action(CLI_ACTOR, "api_token.revoke", &t.name)
                        .await?;
                    println!("API token {} revoked", t.name);
                }
            }
            Ok(())
        }
        AdminCommand::Log { limit } => {
            let store = open_store(config).await?;
            println!(
                "{:<24} {:<12} {:<22} OBJECT",
                "WHEN (UTC)", "ACTOR", "ACTION"
            );
            for a in store.admin_actions(limit).await? {
                println!(
                    "{:<24} {:<12} {:<22} {}",
                    format_ms(a.created_at),
                    a.actor,
                    a.action,
                    a.object
                );
            }
            Ok(())
        }
    }
}
