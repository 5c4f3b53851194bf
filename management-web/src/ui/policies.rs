//! A tenant's visitor access policies (docs/policies.md): every scope's rules, a form per rule
//! kind for one scope (inherit, off, or on with its settings), clearing a scope, and the
//! tenant's visitor API keys (create: the key is shown once; revoke). Rules are validated by the
//! store as for the API; Basic passwords are hashed here and only user names are ever shown.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use relay_store::{
    ApiKeyRule, BasicRule, CorsRule, JwtKey, JwtRule, PolicyRules, PolicyScope, RateLimitRule, Rule,
};
use serde::Deserialize;

use super::{enc, failure, guard, render, Chrome, CsrfForm, Form, PageResult, Query, SecretPage};
use crate::actions;
use crate::actions::policies::{parse_scope, scope_key};
use crate::auth::Admin;
use crate::error::Error;
use crate::view;
use crate::AppState;

#[derive(Template)]
#[template(path = "policies.html")]
struct PoliciesPage {
    chrome: Chrome,
    tenant: String,
    scopes: Vec<ScopeView>,
    /// Scopes offered in the scope picker: the stored ones, the tenant's hostnames and their
    /// targets.
    suggestions: Vec<String>,
    /// The scope the forms change, with its rules.
    edit: EditView,
    keys: Vec<KeyRow>,
}

/// One stored scope: (rule kind, what it says) rows.
struct ScopeView {
    key: String,
    edit_href: String,
    rows: Vec<(&'static str, String)>,
}

struct KeyRow {
    id: String,
    prefix: String,
    label: String,
    created: String,
    revoked: String,
}

/// The forms' values: a kind's state (`inherit`, `off`, `on`) and its settings.
#[derive(Default)]
struct EditView {
    scope: String,
    allow_state: &'static str,
    allow_list: String,
    deny_state: &'static str,
    deny_list: String,
    key_state: &'static str,
    key_header: String,
    basic_state: &'static str,
    basic_realm: String,
    basic_users: Vec<String>,
    jwt_state: &'static str,
    jwt_issuer: String,
    jwt_audience: String,
    jwt_algorithms: String,
    jwt_keys: String,
    jwt_jwks_url: String,
    jwt_leeway: String,
    rate_state: &'static str,
    rate_per_minute: String,
    rate_burst: String,
    cors_state: &'static str,
    cors_origins: String,
    cors_methods: String,
    cors_headers: String,
    cors_credentials: bool,
    cors_max_age: String,
}

#[derive(Deserialize, Default)]
pub(super) struct PoliciesQuery {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    done: String,
}

pub(super) async fn show(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<PoliciesQuery>,
) -> PageResult {
    let scope = if q.scope.is_empty() {
        Ok(PolicyScope::Tenant)
    } else {
        parse_scope(q.scope.trim())
    };
    match scope {
        Ok(scope) => policies_page(&state, &admin, &name, &scope, &q.done, None).await,
        Err(e) => policies_page(&state, &admin, &name, &PolicyScope::Tenant, "", Some(&e)).await,
    }
}

/// One rule kind at one scope; only the fields of `kind` are read.
#[derive(Deserialize)]
pub(super) struct RuleForm {
    csrf: String,
    scope: String,
    /// `allow_ip`, `deny_ip`, `api_key`, `basic`, `basic_remove`, `jwt`, `rate_limit`, `cors`.
    kind: String,
    /// `inherit`, `off` or `on`.
    #[serde(default)]
    state: String,
    #[serde(default)]
    list: String,
    #[serde(default)]
    header: String,
    #[serde(default)]
    realm: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    algorithms: String,
    #[serde(default)]
    keys: String,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    leeway: String,
    #[serde(default)]
    per_minute: String,
    #[serde(default)]
    burst: String,
    #[serde(default)]
    origins: String,
    #[serde(default)]
    methods: String,
    #[serde(default)]
    headers: String,
    #[serde(default)]
    credentials: Option<String>,
    #[serde(default)]
    max_age: String,
}

pub(super) async fn change(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<RuleForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let scope = match parse_scope(form.scope.trim()) {
        Ok(s) => s,
        Err(e) => {
            return policies_page(&state, &admin, &name, &PolicyScope::Tenant, "", Some(&e)).await
        }
    };
    let done = async {
        let mut rules = actions::policies::rules(&state, &name, &scope).await?;
        apply(&mut rules, &form).await?;
        actions::policies::set(&state, &admin.actor(), &name, &scope, &rules).await
    };
    finish(&state, &admin, &name, &scope, "saved", done.await).await
}

#[derive(Deserialize)]
pub(super) struct ClearForm {
    csrf: String,
    scope: String,
}

pub(super) async fn clear(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ClearForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let scope = parse_scope(form.scope.trim())?;
    let done = actions::policies::set(
        &state,
        &admin.actor(),
        &name,
        &scope,
        &PolicyRules::default(),
    )
    .await;
    finish(&state, &admin, &name, &scope, "cleared", done).await
}

#[derive(Deserialize)]
pub(super) struct KeyForm {
    csrf: String,
    #[serde(default)]
    label: String,
}

pub(super) async fn create_key(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<KeyForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let created =
        actions::policies::create_key(&state, &admin.actor(), &name, form.label.trim()).await?;
    let (id, tenant) = (&created.key.id, &created.key.tenant);
    Ok(render(
        StatusCode::OK,
        &SecretPage {
            chrome: Chrome::new(&admin, "tenants"),
            title: format!("API key {id} for {tenant}"),
            back: format!("/tenants/{tenant}/policies"),
            secret: created.value.clone(),
            hint: format!(
                "Visitors send it in the header an API key rule names (default {}); the relay \
                 removes it before the backend. For example:",
                relay_store::DEFAULT_API_KEY_HEADER
            ),
            example: format!(
                "curl -H '{}: {}' https://RELAY-HOST/relay/{tenant}/TARGET/",
                relay_store::DEFAULT_API_KEY_HEADER,
                created.value
            ),
        },
    ))
}

pub(super) async fn revoke_key(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::policies::revoke_key(&state, &admin.actor(), &name, &id).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}/policies?done=key-revoked")).into_response())
}

/// What a `done=` code of this page says.
fn notice(done: &str) -> &'static str {
    match done {
        "saved" => "Policy saved: relays apply it within a second.",
        "cleared" => "Scope cleared: it inherits every rule kind again.",
        "key-revoked" => "API key revoked: relays refuse it within a second.",
        _ => "",
    }
}

/// After a change: back to the page on the changed scope, or the form's input error on it.
async fn finish(
    state: &AppState,
    admin: &Admin,
    name: &str,
    scope: &PolicyScope,
    done: &str,
    outcome: Result<(), Error>,
) -> PageResult {
    match outcome {
        Ok(()) => {
            let tenant = name.to_ascii_lowercase();
            let scope = enc(&scope_key(scope));
            let to = format!("/tenants/{tenant}/policies?scope={scope}&done={done}");
            Ok(Redirect::to(&to).into_response())
        }
        Err(e) if e.is_input() => policies_page(state, admin, name, scope, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

async fn policies_page(
    state: &AppState,
    admin: &Admin,
    name: &str,
    scope: &PolicyScope,
    done: &str,
    failed: Option<&Error>,
) -> Result<Response, crate::error::PageError> {
    let (status, error) = failure(failed);
    let (tenant, all) = actions::policies::overview(state, name).await?;
    let keys = actions::policies::keys(state, &tenant).await?;
    let hostnames = state.store().hostnames(&tenant).await?;
    let mut suggestions: Vec<String> = vec!["tenant".into()];
    suggestions.extend(all.iter().map(|(s, _)| scope_key(s)));
    for h in &hostnames {
        suggestions.push(format!("target:{}", h.target));
        suggestions.push(format!("host:{}", h.hostname));
    }
    suggestions.sort();
    suggestions.dedup();
    let current = all
        .iter()
        .find(|(s, _)| s == scope)
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let mut chrome = Chrome::new(admin, "tenants");
    chrome.notice = notice(done).to_string();
    chrome.error = error;
    Ok(render(
        status,
        &PoliciesPage {
            chrome,
            scopes: all
                .iter()
                .map(|(s, r)| ScopeView {
                    key: scope_key(s),
                    edit_href: format!("/tenants/{tenant}/policies?scope={}", enc(&scope_key(s))),
                    rows: describe(r),
                })
                .collect(),
            suggestions,
            edit: edit_view(scope, &current),
            keys: keys
                .iter()
                .map(|k| KeyRow {
                    prefix: format!("rak_{}_…", k.id),
                    id: k.id.clone(),
                    label: k.label.clone(),
                    created: view::when(k.created_at),
                    revoked: k.revoked_at.map(view::when).unwrap_or_default(),
                })
                .collect(),
            tenant,
        },
    ))
}

/// Changes the one rule kind the form names.
async fn apply(rules: &mut PolicyRules, f: &RuleForm) -> Result<(), Error> {
    if f.kind != "basic_remove" && !["inherit", "off", "on"].contains(&f.state.as_str()) {
        return Err(Error::Validation("state: use inherit, off or on".into()));
    }
    /// The kind's value for `inherit` and `off`; `None` means the state is `on`.
    fn plain<T>(state: &str) -> Option<Option<Rule<T>>> {
        match state {
            "inherit" => Some(None),
            "off" => Some(Some(Rule::Off)),
            _ => None,
        }
    }
    match f.kind.as_str() {
        "allow_ip" | "deny_ip" => {
            let value = match f.state.as_str() {
                "inherit" => None,
                "off" => Some(Vec::new()),
                _ => Some(items(&f.list)),
            };
            if f.kind == "allow_ip" {
                rules.allow_ip = value;
            } else {
                rules.deny_ip = value;
            }
        }
        "api_key" => {
            rules.api_key = plain(&f.state).unwrap_or_else(|| {
                let header = match f.header.trim() {
                    "" => relay_store::DEFAULT_API_KEY_HEADER.to_string(),
                    h => h.to_ascii_lowercase(),
                };
                Some(Rule::On(ApiKeyRule { header }))
            });
        }
        "basic" => {
            if let Some(v) = plain(&f.state) {
                rules.basic = v;
                return Ok(());
            }
            let mut basic = match rules.basic.take() {
                Some(Rule::On(b)) => b,
                _ => BasicRule {
                    realm: "relay".into(),
                    users: Default::default(),
                },
            };
            if !f.realm.trim().is_empty() {
                basic.realm = f.realm.trim().to_string();
            }
            let user = f.user.trim();
            if !user.is_empty() {
                if f.password.is_empty() {
                    return Err(Error::Validation(format!(
                        "give a password for Basic user {user:?}"
                    )));
                }
                let hash = relay_store::hash_password(&f.password).await?;
                basic.users.insert(user.to_string(), hash);
            }
            rules.basic = Some(Rule::On(basic));
        }
        "basic_remove" => {
            let user = f.user.trim();
            let Some(Rule::On(basic)) = &mut rules.basic else {
                return Err(Error::Validation("no Basic users at this scope".into()));
            };
            if basic.users.remove(user).is_none() {
                return Err(Error::Validation(format!(
                    "no Basic user {user:?} at this scope"
                )));
            }
            if basic.users.is_empty() {
                rules.basic = None;
            }
        }
        "jwt" => {
            if let Some(v) = plain(&f.state) {
                rules.jwt = v;
                return Ok(());
            }
            let algorithms = match items(&f.algorithms) {
                a if a.is_empty() => vec!["RS256".to_string()],
                a => a,
            };
            let jwks_url = Some(f.jwks_url.trim().to_string()).filter(|u| !u.is_empty());
            rules.jwt = Some(Rule::On(JwtRule {
                issuer: f.issuer.trim().to_string(),
                audience: items(&f.audience),
                algorithms,
                keys: pem_keys(&f.keys)?,
                jwks_url,
                leeway_secs: number("JWT clock skew", &f.leeway, 60)?,
            }));
        }
        "rate_limit" => {
            if let Some(v) = plain(&f.state) {
                rules.rate_limit = v;
                return Ok(());
            }
            let per_minute = number("requests per minute", &f.per_minute, 0)?;
            let burst = number("burst", &f.burst, u64::from(per_minute))?;
            rules.rate_limit = Some(Rule::On(RateLimitRule { per_minute, burst }));
        }
        "cors" => {
            if let Some(v) = plain(&f.state) {
                rules.cors = v;
                return Ok(());
            }
            let methods = match items(&f.methods) {
                m if m.is_empty() => ["GET", "POST", "PUT", "PATCH", "DELETE"]
                    .map(String::from)
                    .to_vec(),
                m => m,
            };
            rules.cors = Some(Rule::On(CorsRule {
                allow_origins: items(&f.origins),
                allow_methods: methods,
                allow_headers: items(&f.headers),
                allow_credentials: f.credentials.is_some(),
                max_age_secs: number("CORS max age", &f.max_age, 600)?,
            }));
        }
        other => return Err(Error::Validation(format!("unknown rule kind {other:?}"))),
    }
    Ok(())
}

/// Comma-, space- or line-separated items.
fn items(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .collect()
}

/// A whole number from a field; empty gives `default`.
fn number<T: TryFrom<u64>>(label: &str, v: &str, default: u64) -> Result<T, Error> {
    let v = v.trim();
    let n = if v.is_empty() {
        Some(default)
    } else {
        v.parse::<u64>().ok()
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| Error::Validation(format!("{label} must be a whole number")))
}

/// PEM public keys, each optionally after a `kid: NAME` line.
fn pem_keys(text: &str) -> Result<Vec<JwtKey>, Error> {
    let bad = || {
        Error::Validation(
            "JWT keys: PEM public keys, each optionally after a line \"kid: NAME\"".into(),
        )
    };
    let mut keys = Vec::new();
    let (mut kid, mut block): (Option<String>, Option<String>) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match &mut block {
            Some(pem) => {
                pem.push_str(line);
                pem.push('\n');
                if line.starts_with("-----END ") {
                    keys.push(JwtKey {
                        kid: kid.take(),
                        pem: block.take().unwrap_or_default(),
                    });
                }
            }
            None if line.starts_with("-----BEGIN ") => block = Some(format!("{line}\n")),
            None => match line.strip_prefix("kid:") {
                Some(k) if kid.is_none() && !k.trim().is_empty() => {
                    kid = Some(k.trim().to_string())
                }
                _ => return Err(bad()),
            },
        }
    }
    if block.is_some() || kid.is_some() {
        return Err(bad());
    }
    Ok(keys)
}

/// A scope's rules for people, kind by kind (Basic: user names only).
fn describe(r: &PolicyRules) -> Vec<(&'static str, String)> {
    fn rule<T>(r: &Option<Rule<T>>, on: impl Fn(&T) -> String) -> Option<String> {
        r.as_ref().map(|r| match r {
            Rule::Off => "off (overrides wider scopes)".to_string(),
            Rule::On(t) => on(t),
        })
    }
    let list = |l: &Vec<String>| {
        if l.is_empty() {
            "none here (overrides wider scopes)".to_string()
        } else {
            l.join(", ")
        }
    };
    [
        ("IP allow list", r.allow_ip.as_ref().map(list)),
        ("IP deny list", r.deny_ip.as_ref().map(list)),
        (
            "API key",
            rule(&r.api_key, |k| format!("required in header {}", k.header)),
        ),
        (
            "HTTP Basic",
            rule(&r.basic, |b| {
                let users: Vec<&str> = b.users.keys().map(String::as_str).collect();
                format!("realm {:?}, users {}", b.realm, users.join(", "))
            }),
        ),
        (
            "JWT",
            rule(&r.jwt, |j| {
                let jwks = j
                    .jwks_url
                    .as_deref()
                    .map(|u| format!(", JWKS {u}"))
                    .unwrap_or_default();
                format!(
                    "issuer {}, audience {}, algorithms {}, {} PEM key(s){jwks}, clock skew {} s",
                    j.issuer,
                    j.audience.join(", "),
                    j.algorithms.join(", "),
                    j.keys.len(),
                    j.leeway_secs
                )
            }),
        ),
        (
            "Rate limit",
            rule(&r.rate_limit, |l| {
                format!(
                    "{} per minute per visitor address, burst {}",
                    l.per_minute, l.burst
                )
            }),
        ),
        (
            "CORS",
            rule(&r.cors, |c| {
                format!(
                    "origins {}, methods {}, headers {}, credentials {}, max age {} s",
                    c.allow_origins.join(", "),
                    c.allow_methods.join(", "),
                    if c.allow_headers.is_empty() {
                        "none".into()
                    } else {
                        c.allow_headers.join(", ")
                    },
                    if c.allow_credentials { "yes" } else { "no" },
                    c.max_age_secs
                )
            }),
        ),
    ]
    .into_iter()
    .filter_map(|(kind, v)| v.map(|v| (kind, v)))
    .collect()
}

/// The forms' values for `scope` as stored.
fn edit_view(scope: &PolicyScope, r: &PolicyRules) -> EditView {
    fn state<T>(r: &Option<Rule<T>>) -> &'static str {
        match r {
            None => "inherit",
            Some(Rule::Off) => "off",
            Some(Rule::On(_)) => "on",
        }
    }
    let ip_state = |l: &Option<Vec<String>>| match l {
        None => "inherit",
        Some(l) if l.is_empty() => "off",
        Some(_) => "on",
    };
    let mut v = EditView {
        scope: scope_key(scope),
        allow_state: ip_state(&r.allow_ip),
        allow_list: r.allow_ip.as_deref().unwrap_or_default().join("\n"),
        deny_state: ip_state(&r.deny_ip),
        deny_list: r.deny_ip.as_deref().unwrap_or_default().join("\n"),
        key_state: state(&r.api_key),
        key_header: relay_store::DEFAULT_API_KEY_HEADER.into(),
        basic_state: state(&r.basic),
        basic_realm: "relay".into(),
        jwt_state: state(&r.jwt),
        jwt_algorithms: "RS256".into(),
        jwt_leeway: "60".into(),
        rate_state: state(&r.rate_limit),
        cors_state: state(&r.cors),
        cors_methods: "GET, POST, PUT, PATCH, DELETE".into(),
        cors_max_age: "600".into(),
        ..EditView::default()
    };
    if let Some(Rule::On(k)) = &r.api_key {
        v.key_header = k.header.clone();
    }
    if let Some(Rule::On(b)) = &r.basic {
        v.basic_realm = b.realm.clone();
        v.basic_users = b.users.keys().cloned().collect();
    }
    if let Some(Rule::On(j)) = &r.jwt {
        v.jwt_issuer = j.issuer.clone();
        v.jwt_audience = j.audience.join(", ");
        v.jwt_algorithms = j.algorithms.join(", ");
        v.jwt_keys = j
            .keys
            .iter()
            .map(|k| match &k.kid {
                Some(kid) => format!("kid: {kid}\n{}", k.pem.trim_end()),
                None => k.pem.trim_end().to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        v.jwt_jwks_url = j.jwks_url.clone().unwrap_or_default();
        v.jwt_leeway = j.leeway_secs.to_string();
    }
    if let Some(Rule::On(l)) = &r.rate_limit {
        v.rate_per_minute = l.per_minute.to_string();
        v.rate_burst = l.burst.to_string();
    }
    if let Some(Rule::On(c)) = &r.cors {
        v.cors_origins = c.allow_origins.join(", ");
        v.cors_methods = c.allow_methods.join(", ");
        v.cors_headers = c.allow_headers.join(", ");
        v.cors_credentials = c.allow_credentials;
        v.cors_max_age = c.max_age_secs.to_string();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_take_an_optional_kid() {
        let text = "kid: k1\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n\n\
                    -----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----";
        let keys = pem_keys(text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert!(keys[0].pem.contains("AAAA") && keys[0].pem.ends_with("-----\n"));
        assert_eq!(keys[1].kid, None);
        assert!(pem_keys("kid: k1").is_err());
        assert!(pem_keys("not a key").is_err());
        assert!(pem_keys("-----BEGIN PUBLIC KEY-----\nAAAA").is_err());
        assert!(pem_keys("").unwrap().is_empty());
    }

    #[test]
    fn basic_hashes_are_never_described() {
        let rules = PolicyRules {
            basic: Some(Rule::On(BasicRule {
                realm: "r".into(),
                users: [("alice".to_string(), "$argon2id$secret".to_string())]
                    .into_iter()
                    .collect(),
            })),
            ..PolicyRules::default()
        };
        let text = format!("{:?}", describe(&rules));
        assert!(
            text.contains("alice") && !text.contains("argon2id"),
            "{text}"
        );
        let v = edit_view(&PolicyScope::Tenant, &rules);
        assert_eq!(v.basic_users, ["alice"]);
    }

    #[test]
    fn items_split_on_commas_spaces_and_lines() {
        assert_eq!(
            items("10.0.0.0/8, 192.0.2.1\n2001:db8::/32"),
            ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
        );
        assert!(items(" ,\n").is_empty());
    }
}
