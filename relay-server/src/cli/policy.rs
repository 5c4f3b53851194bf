//! `relay-server tenant policy …` and `tenant api-key …`: visitor access policies per tenant,
//! target and hostname (docs/policies.md), and the tenant's visitor API keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use relay_store::{
    ApiKeyRule, BasicRule, CorsRule, JwtKey, JwtRule, PolicyRules, PolicyScope, RateLimitRule,
    Rule, Store,
};

use super::{format_ms, hasher, CLI_ACTOR};
use crate::config::Config;

/// `tenant api-key …`
#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Create a visitor API key and print it (shown only this once). Visitors send it in the
    /// policy's header (default x-relay-key) when the tenant's policy has `--api-key on`.
    Create {
        /// The tenant.
        tenant: String,
        /// A note for people, e.g. who holds the key.
        #[arg(long, value_name = "TEXT", default_value = "")]
        label: String,
    },
    /// List a tenant's API keys (never the keys themselves).
    List {
        /// The tenant.
        tenant: String,
    },
    /// Revoke an API key: the relays refuse it within a second.
    Revoke {
        /// The tenant.
        tenant: String,
        /// The key's id, as `tenant api-key list` shows it.
        id: String,
    },
}

/// Which scope of a tenant a policy command changes: the tenant (default), a target or a
/// hostname.
#[derive(Args, Debug, Clone)]
pub struct ScopeArgs {
    /// Change the policy of this target only (overrides the tenant's, kind by kind).
    #[arg(long, value_name = "TARGET", conflicts_with = "hostname")]
    target: Option<String>,
    /// Change the policy of this hostname only (overrides the target's and the tenant's).
    #[arg(long, value_name = "HOSTNAME")]
    hostname: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> anyhow::Result<PolicyScope> {
        Ok(match (&self.target, &self.hostname) {
            (Some(t), _) => PolicyScope::Target(
                relay_store::validate_name(t).map_err(|e| anyhow::anyhow!("--target: {e}"))?,
            ),
            (None, Some(h)) => PolicyScope::Hostname(
                relay_store::canonical_hostname(h)
                    .map_err(|e| anyhow::anyhow!("--hostname: {e}"))?,
            ),
            (None, None) => PolicyScope::Tenant,
        })
    }
}

/// `tenant policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show a tenant's policies, scope by scope (Basic users without their hashes).
    Show {
        /// The tenant.
        tenant: String,
    },
    /// Change the policy of one scope; unset flags keep their values.
    Set(Box<PolicySetArgs>),
    /// Remove every rule of one scope (it inherits everything again).
    Clear {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Add or replace an HTTP Basic user (argon2id hash of the password read from a file).
    BasicUser {
        /// The tenant.
        tenant: String,
        /// The user name (no ':').
        user: String,
        /// File holding the password ('-' for standard input); the first line is used.
        #[arg(long, value_name = "FILE", required_unless_present = "remove")]
        password_file: Option<PathBuf>,
        /// Remove the user instead.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// `tenant policy set …`
#[derive(Args, Debug)]
pub struct PolicySetArgs {
    /// The tenant.
    tenant: String,
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    ip: IpArgs,
    /// Require one of the tenant's API keys: on, off (overrides a wider scope) or inherit.
    #[arg(long, value_name = "on|off|inherit", value_parser = ["on", "off", "inherit"])]
    api_key: Option<String>,
    /// The header carrying the API key (default x-relay-key; implies --api-key on).
    #[arg(long, value_name = "NAME")]
    api_key_header: Option<String>,
    /// HTTP Basic: off (overrides a wider scope) or inherit; users come from `policy basic-user`.
    #[arg(long, value_name = "off|inherit", value_parser = ["off", "inherit"])]
    basic: Option<String>,
    /// The realm of the Basic challenge.
    #[arg(long, value_name = "TEXT")]
    basic_realm: Option<String>,
    /// JWT bearer tokens: off or inherit; or give --jwt-issuer and the rest to turn them on.
    #[arg(long, value_name = "off|inherit", value_parser = ["off", "inherit"])]
    jwt: Option<String>,
    /// The required `iss` (turns JWT validation on with the other --jwt-* flags).
    #[arg(long, value_name = "ISSUER", requires = "jwt_audience")]
    jwt_issuer: Option<String>,
    /// Accepted `aud` values.
    #[arg(long, value_name = "AUD,...", value_delimiter = ',')]
    jwt_audience: Vec<String>,
    /// Accepted algorithms (asymmetric only).
    #[arg(
        long,
        value_name = "ALG,...",
        value_delimiter = ',',
        default_value = "RS256"
    )]
    jwt_algorithms: Vec<String>,
    /// A PEM public key, `FILE` or `KID=FILE`; repeat for several.
    #[arg(long, value_name = "[KID=]FILE")]
    jwt_key: Vec<String>,
    /// A JWKS document to take keys from (https://; fetched and cached by the relay).
    #[arg(long, value_name = "URL")]
    jwt_jwks_url: Option<String>,
    /// Allowed clock skew in seconds (at most 300).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    jwt_leeway: u64,
    /// Requests per minute per visitor address, or off / inherit.
    #[arg(long, value_name = "N|off|inherit")]
    rate_limit: Option<String>,
    /// The bucket size for --rate-limit (default: the per-minute rate, at least 1).
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// CORS: off or inherit; or give --cors-origins (and the rest) to turn it on.
    #[arg(long, value_name = "off|inherit", value_parser = ["off", "inherit"])]
    cors: Option<String>,
    /// Origins whose browsers may call (https://app.example, or *); turns CORS on.
    #[arg(long, value_name = "ORIGIN,...", value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    /// Methods preflights may ask for.
    #[arg(
        long,
        value_name = "METHOD,...",
        value_delimiter = ',',
        default_value = "GET,POST,PUT,PATCH,DELETE"
    )]
    cors_methods: Vec<String>,
    /// Request headers preflights may ask for (* for any).
    #[arg(long, value_name = "HEADER,...", value_delimiter = ',')]
    cors_headers: Vec<String>,
    /// Let browsers send cookies and credentials.
    #[arg(long)]
    cors_credentials: bool,
    /// How long browsers may cache a preflight answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    cors_max_age: u32,
}

/// IP allow and deny lists (also on `tenant set`).
#[derive(Args, Debug, Default)]
pub struct IpArgs {
    /// Only these CIDR blocks may pass ('' for no allow-list at this scope).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    allow_ip: Option<Vec<String>>,
    /// These CIDR blocks are refused ('' for none at this scope).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    deny_ip: Option<Vec<String>>,
}

impl IpArgs {
    fn is_set(&self) -> bool {
        self.allow_ip.is_some() || self.deny_ip.is_some()
    }

    fn apply(&self, rules: &mut PolicyRules) {
        let clean = |l: &Vec<String>| {
            l.iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        };
        if let Some(l) = &self.allow_ip {
            rules.allow_ip = Some(clean(l));
        }
        if let Some(l) = &self.deny_ip {
            rules.deny_ip = Some(clean(l));
        }
    }
}

/// `tenant set NAME --allow-ip … --deny-ip …`: the tenant scope's IP lists.
pub(super) async fn set_tenant_ip(store: &Store, tenant: &str, ip: &IpArgs) -> anyhow::Result<()> {
    if !ip.is_set() {
        return Ok(());
    }
    let mut rules = store.policy(tenant, &PolicyScope::Tenant).await?;
    ip.apply(&mut rules);
    save(store, tenant, &PolicyScope::Tenant, &rules).await
}

pub(super) async fn api_key(
    cmd: ApiKeyCommand,
    store: &Store,
    config: &Config,
) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create { tenant, label } => {
            let hasher = hasher(config)?;
            let k = store.create_api_key(&tenant, &label, &hasher).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "api_key.create",
                    &format!("{}/{}", k.key.tenant, k.key.id),
                )
                .await?;
            println!("API key {} created for tenant {}", k.key.id, k.key.tenant);
            println!(
                "key (shown once; visitors send it in the policy's header, default x-relay-key):"
            );
            println!("{}", k.value);
        }
        ApiKeyCommand::List { tenant } => {
            println!("{:<34} {:<8} {:<22} LABEL", "ID", "STATE", "CREATED");
            for k in store.api_keys(&tenant).await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<34} {:<8} {:<22} {}",
                    k.id,
                    state,
                    format_ms(k.created_at),
                    k.label
                );
            }
        }
        ApiKeyCommand::Revoke { tenant, id } => {
            store.revoke_api_key(&tenant, &id).await?;
            store
                .record_admin_action(CLI_ACTOR, "api_key.revoke", &format!("{tenant}/{id}"))
                .await?;
            println!("API key {id} revoked; relays refuse it within a second");
        }
    }
    Ok(())
}

pub(super) async fn policy(cmd: PolicyCommand, store: &Store) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Show { tenant } => {
            let all = store.policies(&tenant).await?;
            if all.is_empty() {
                println!("no access policy: every visitor reaches the tenant's targets");
            }
            for (scope, rules) in all {
                println!("[{scope}]");
                print_rules(&rules);
            }
        }
        PolicyCommand::Clear { tenant, scope } => {
            let scope = scope.scope()?;
            save(store, &tenant, &scope, &PolicyRules::default()).await?;
        }
        PolicyCommand::BasicUser {
            tenant,
            user,
            password_file,
            remove,
            scope,
        } => {
            let scope = scope.scope()?;
            let mut rules = store.policy(&tenant, &scope).await?;
            let mut basic = match rules.basic.take() {
                Some(Rule::On(b)) => b,
                _ => BasicRule {
                    realm: "relay".into(),
                    users: Default::default(),
                },
            };
            if remove {
                anyhow::ensure!(
                    basic.users.remove(&user).is_some(),
                    "no Basic user {user:?} at this scope"
                );
            } else {
                anyhow::ensure!(
                    !user.is_empty() && !user.contains(':'),
                    "a Basic user name is not empty and has no ':'"
                );
                let Some(file) = password_file else {
                    anyhow::bail!("--password-file is required");
                };
                let password = read_password(&file)?;
                anyhow::ensure!(!password.is_empty(), "the password is empty");
                let hash = relay_store::hash_password(&password).await?;
                basic.users.insert(user.clone(), hash);
            }
            rules.basic = (!basic.users.is_empty()).then_some(Rule::On(basic));
            save(store, &tenant, &scope, &rules).await?;
        }
        PolicyCommand::Set(args) => {
            let scope = args.scope.scope()?;
            let mut rules = store.policy(&args.tenant, &scope).await?;
            args.ip.apply(&mut rules);
            match (args.api_key.as_deref(), &args.api_key_header) {
                (Some("off"), _) => rules.api_key = Some(Rule::Off),
                (Some("inherit"), _) => rules.api_key = None,
                (Some(_), h) | (None, h @ Some(_)) => {
                    let header = h
                        .clone()
                        .unwrap_or_else(|| relay_store::DEFAULT_API_KEY_HEADER.into())
                        .to_ascii_lowercase();
                    rules.api_key = Some(Rule::On(ApiKeyRule { header }));
                }
                (None, None) => {}
            }
            match args.basic.as_deref() {
                Some("off") => rules.basic = Some(Rule::Off),
                Some(_) => rules.basic = None,
                None => {}
            }
            if let Some(realm) = args.basic_realm {
                match &mut rules.basic {
                    Some(Rule::On(b)) => b.realm = realm,
                    _ => anyhow::bail!(
                        "--basic-realm: add a user first (`tenant policy basic-user`)"
                    ),
                }
            }
            match args.jwt.as_deref() {
                Some("off") => rules.jwt = Some(Rule::Off),
                Some(_) => rules.jwt = None,
                None => {}
            }
            if let Some(issuer) = args.jwt_issuer {
                let mut keys = Vec::new();
                for k in &args.jwt_key {
                    let (kid, file) = match k.split_once('=') {
                        Some((kid, file)) => (Some(kid.to_string()), file),
                        None => (None, k.as_str()),
                    };
                    let pem = std::fs::read_to_string(file)
                        .with_context(|| format!("reading JWT key {file}"))?;
                    keys.push(JwtKey { kid, pem });
                }
                rules.jwt = Some(Rule::On(JwtRule {
                    issuer,
                    audience: args.jwt_audience,
                    algorithms: args.jwt_algorithms,
                    keys,
                    jwks_url: args.jwt_jwks_url,
                    leeway_secs: args.jwt_leeway,
                }));
            }
            match args.rate_limit.as_deref() {
                Some("off") => rules.rate_limit = Some(Rule::Off),
                Some("inherit") => rules.rate_limit = None,
                Some(n) => {
                    let per_minute: u32 = n.parse().ok().filter(|n| *n > 0).context(
                        "--rate-limit takes requests per minute (above 0), off or inherit",
                    )?;
                    rules.rate_limit = Some(Rule::On(RateLimitRule {
                        per_minute,
                        burst: args.burst.unwrap_or(per_minute).max(1),
                    }));
                }
                None => {
                    if let (Some(b), Some(Rule::On(r))) = (args.burst, &mut rules.rate_limit) {
                        r.burst = b.max(1);
                    }
                }
            }
            match args.cors.as_deref() {
                Some("off") => rules.cors = Some(Rule::Off),
                Some(_) => rules.cors = None,
                None => {}
            }
            if let Some(origins) = args.cors_origins {
                rules.cors = Some(Rule::On(CorsRule {
                    allow_origins: origins,
                    allow_methods: args.cors_methods,
                    allow_headers: args.cors_headers,
                    allow_credentials: args.cors_credentials,
                    max_age_secs: args.cors_max_age,
                }));
            }
            save(store, &args.tenant, &scope, &rules).await?;
        }
    }
    Ok(())
}

/// Validates (PEM keys included, as the relay compiles them), stores and records the change.
async fn save(
    store: &Store,
    tenant: &str,
    scope: &PolicyScope,
    rules: &PolicyRules,
) -> anyhow::Result<()> {
    crate::policy::validate(rules).map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?;
    store.set_policy(tenant, scope, rules).await?;
    store
        .record_admin_action(CLI_ACTOR, "tenant.policy", &format!("{tenant} [{scope}]"))
        .await?;
    println!("policy of {tenant} [{scope}] updated");
    print_rules(rules);
    Ok(())
}

fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("reading the password from standard input")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the password file {}", file.display()))?
    };
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn print_rules(r: &PolicyRules) {
    if r.is_empty() {
        println!("  (inherits everything)");
    }
    if let Some(l) = &r.allow_ip {
        println!("  allow-ip:   {}", list_or_none(l));
    }
    if let Some(l) = &r.deny_ip {
        println!("  deny-ip:    {}", list_or_none(l));
    }
    match &r.api_key {
        Some(Rule::On(k)) => println!("  api-key:    on (header {})", k.header),
        Some(Rule::Off) => println!("  api-key:    off"),
        None => {}
    }
    match &r.basic {
        Some(Rule::On(b)) => println!(
            "  basic:      realm {:?}, users {}",
            b.realm,
            b.users.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Some(Rule::Off) => println!("  basic:      off"),
        None => {}
    }
    match &r.jwt {
        Some(Rule::On(j)) => println!(
            "  jwt:        issuer {}, audience {}, algorithms {}, {} key(s){}, skew {} s",
            j.issuer,
            j.audience.join(","),
            j.algorithms.join(","),
            j.keys.len(),
            j.jwks_url
                .as_deref()
                .map(|u| format!(", JWKS {u}"))
                .unwrap_or_default(),
            j.leeway_secs
        ),
        Some(Rule::Off) => println!("  jwt:        off"),
        None => {}
    }
    match &r.rate_limit {
        Some(Rule::On(l)) => println!(
            "  rate-limit: {}/min per visitor address, burst {}",
            l.per_minute, l.burst
        ),
        Some(Rule::Off) => println!("  rate-limit: off"),
        None => {}
    }
    match &r.cors {
        Some(Rule::On(c)) => println!(
            "  cors:       origins {}, methods {}, headers {}, credentials {}, max-age {} s",
            c.allow_origins.join(","),
            c.allow_methods.join(","),
            list_or_none(&c.allow_headers),
            c.allow_credentials,
            c.max_age_secs
        ),
        Some(Rule::Off) => println!("  cors:       off"),
        None => {}
    }
}

fn list_or_none(l: &[String]) -> String {
    if l.is_empty() {
        "(none)".into()
    } else {
        l.join(", ")
    }
}
