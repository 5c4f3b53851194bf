//! The admin pages (askama templates, server-rendered; JavaScript only enhances): an adapter
//! over the action layer, one module per resource. A handler parses the form or query, calls an
//! action and redirects or renders; a failure is an [`Error`] shown as an error page
//! ([`PageError`]), except a taken or invalid value, which is shown on its form again with the
//! same status (409, 422).
//!
//! Every page needs a login session; every POST also needs the session's CSRF token and a
//! same-origin request (see `auth`). After a change the browser is redirected (303) to a page
//! that says what happened, chosen from a fixed list: nothing a visitor typed is reflected.

mod admin_log;
mod audit;
mod credentials;
mod dashboard;
mod hostnames;
mod login;
mod nodes;
mod pairing;
mod policies;
mod queue;
mod tenants;
mod tokens;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use relay_store::AuditRecord;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::{self, Admin};
use crate::error::{Error, PageError};
use crate::view;
use crate::AppState;

/// Every page route: (method, path). The router is built from this list, and the tests walk it
/// to prove that each one refuses a request without a session.
pub static ROUTES: &[(&str, &str)] = &[
    ("get", "/login"),
    ("post", "/login"),
    ("post", "/logout"),
    ("get", "/"),
    ("get", "/tenants"),
    ("post", "/tenants"),
    ("get", "/tenants/{name}"),
    ("get", "/tenants/{name}/sessions"),
    ("post", "/tenants/{name}/settings"),
    ("post", "/tenants/{name}/state"),
    ("get", "/tenants/{name}/delete"),
    ("post", "/tenants/{name}/delete"),
    ("post", "/tenants/{name}/credentials"),
    ("post", "/tenants/{name}/credentials/{id}/revoke"),
    ("post", "/tenants/{name}/hostnames"),
    ("post", "/tenants/{name}/hostnames/{hostname}/remove"),
    ("post", "/tenants/{name}/hostnames/{hostname}/certificate"),
    (
        "post",
        "/tenants/{name}/hostnames/{hostname}/certificate/remove",
    ),
    (
        "post",
        "/tenants/{name}/hostnames/{hostname}/certificate/renew",
    ),
    ("post", "/tenants/{name}/pairing"),
    ("post", "/tenants/{name}/pairing/tokens"),
    ("post", "/tenants/{name}/pairing/tokens/{id}/revoke"),
    ("get", "/tenants/{name}/policies"),
    ("post", "/tenants/{name}/policies"),
    ("post", "/tenants/{name}/policies/clear"),
    ("post", "/tenants/{name}/api-keys"),
    ("post", "/tenants/{name}/api-keys/{id}/revoke"),
    ("get", "/tenants/{name}/queue"),
    ("post", "/tenants/{name}/queue/settings"),
    ("get", "/tenants/{name}/queue/{id}"),
    ("post", "/tenants/{name}/queue/{id}/retry"),
    ("post", "/tenants/{name}/queue/{id}/discard"),
    ("get", "/nodes"),
    ("post", "/nodes/{id}/drain"),
    ("post", "/nodes/{id}/resume"),
    ("get", "/audit"),
    ("get", "/audit.csv"),
    ("get", "/actions"),
    ("get", "/tokens"),
    ("post", "/tokens"),
    ("post", "/tokens/{id}/revoke"),
    ("get", "/static/app.css"),
    ("get", "/static/app.js"),
];

fn handler(method: &str, path: &str) -> MethodRouter<AppState> {
    match (method, path) {
        ("get", "/login") => get(login::page),
        ("post", "/login") => post(login::submit),
        ("post", "/logout") => post(login::logout),
        ("get", "/") => get(dashboard::show),
        ("get", "/tenants") => get(tenants::list),
        ("post", "/tenants") => post(tenants::create),
        ("get", "/tenants/{name}") => get(tenants::show),
        ("get", "/tenants/{name}/sessions") => get(tenants::sessions),
        ("post", "/tenants/{name}/settings") => post(tenants::settings),
        ("post", "/tenants/{name}/state") => post(tenants::state),
        ("get", "/tenants/{name}/delete") => get(tenants::delete_page),
        ("post", "/tenants/{name}/delete") => post(tenants::delete),
        ("post", "/tenants/{name}/credentials") => post(credentials::create),
        ("post", "/tenants/{name}/credentials/{id}/revoke") => post(credentials::revoke),
        ("post", "/tenants/{name}/hostnames") => post(hostnames::add),
        ("post", "/tenants/{name}/hostnames/{hostname}/remove") => post(hostnames::remove),
        ("post", "/tenants/{name}/hostnames/{hostname}/certificate") => {
            post(hostnames::upload_certificate)
        }
        ("post", "/tenants/{name}/hostnames/{hostname}/certificate/remove") => {
            post(hostnames::remove_certificate)
        }
        ("post", "/tenants/{name}/hostnames/{hostname}/certificate/renew") => {
            post(hostnames::renew_certificate)
        }
        ("post", "/tenants/{name}/pairing") => post(pairing::mode),
        ("post", "/tenants/{name}/pairing/tokens") => post(pairing::create_token),
        ("post", "/tenants/{name}/pairing/tokens/{id}/revoke") => post(pairing::revoke_token),
        ("get", "/tenants/{name}/policies") => get(policies::show),
        ("post", "/tenants/{name}/policies") => post(policies::change),
        ("post", "/tenants/{name}/policies/clear") => post(policies::clear),
        ("post", "/tenants/{name}/api-keys") => post(policies::create_key),
        ("post", "/tenants/{name}/api-keys/{id}/revoke") => post(policies::revoke_key),
        ("get", "/tenants/{name}/queue") => get(queue::show),
        ("post", "/tenants/{name}/queue/settings") => post(queue::settings),
        ("get", "/tenants/{name}/queue/{id}") => get(queue::message),
        ("post", "/tenants/{name}/queue/{id}/retry") => post(queue::retry),
        ("post", "/tenants/{name}/queue/{id}/discard") => post(queue::discard),
        ("get", "/nodes") => get(nodes::list),
        ("post", "/nodes/{id}/drain") => post(nodes::drain),
        ("post", "/nodes/{id}/resume") => post(nodes::resume),
        ("get", "/audit") => get(audit::show),
        ("get", "/audit.csv") => get(audit::csv),
        ("get", "/actions") => get(admin_log::show),
        ("get", "/tokens") => get(tokens::list),
        ("post", "/tokens") => post(tokens::create),
        ("post", "/tokens/{id}/revoke") => post(tokens::revoke),
        ("get", "/static/app.css") => get(css),
        ("get", "/static/app.js") => get(js),
        other => unreachable!("page route table names an unknown route {other:?}"),
    }
}

pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (method, path) in ROUTES {
        router = router.route(path, handler(method, path));
    }
    router
}

/// What every page's frame shows.
struct Chrome {
    user: String,
    csrf: String,
    nav: &'static str,
    notice: String,
    error: String,
}

impl Chrome {
    fn new(admin: &Admin, nav: &'static str) -> Chrome {
        Chrome {
            user: admin.session.user.username.clone(),
            csrf: admin.session.csrf.clone(),
            nav,
            notice: String::new(),
            error: String::new(),
        }
    }
}

type PageResult = Result<Response, PageError>;

fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => Error::Internal(format!("template failed: {e}")).page(),
    }
}

/// A form page's status and message: 200 and none, or what went wrong with the form's input.
fn failure(failed: Option<&Error>) -> (StatusCode, String) {
    match failed {
        Some(e) => (e.outcome().status, e.detail()),
        None => (StatusCode::OK, String::new()),
    }
}

/// The checks of every state-changing form.
fn guard(headers: &HeaderMap, admin: &Admin, csrf: &str) -> Result<(), Error> {
    auth::same_origin(headers, admin.origin.as_deref())?;
    if !admin.csrf_ok(csrf) {
        return Err(Error::Forbidden(
            "CSRF check failed: reload the page and try again",
        ));
    }
    Ok(())
}

/// One audit record as the audit log and a tenant's page list it.
struct ReqRow {
    id: String,
    when: String,
    tenant: String,
    method: String,
    path: String,
    status: i64,
    class: i64,
    outcome: String,
    duration: String,
    bytes_in: String,
    bytes_out: String,
    visitor: String,
}

fn req_row(r: &AuditRecord) -> ReqRow {
    ReqRow {
        id: r.request_id.clone(),
        when: view::when(r.created_at),
        tenant: r.tenant.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        status: r.status,
        class: (r.status / 100).clamp(1, 5),
        outcome: r.outcome.clone(),
        duration: view::millis(r.duration_ms),
        bytes_in: view::bytes(r.bytes_in),
        bytes_out: view::bytes(r.bytes_out),
        visitor: r.visitor.clone(),
    }
}

/// A form body; one that cannot be read (no form content type, a missing field) is an error
/// page with the HTTP layer's status.
struct Form<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Form<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Form<T>, PageError> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(Form(v)),
            Err(e) => Err(Error::Rejected(e.status(), e.body_text()).into()),
        }
    }
}

/// Query parameters; malformed ones are an error page (400).
struct Query<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, PageError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(Error::BadQuery(e.body_text()).into()),
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// What a `done=` code says.
fn notice(done: &str) -> &'static str {
    match done {
        "created" => "Tenant created. Create a credential for its connector below.",
        "settings" => "Settings saved.",
        "enabled" => "Tenant enabled.",
        "disabled" => "Tenant disabled: its URLs answer 404 and its connectors are disconnected.",
        "revoked" => "Credential revoked: connectors using it are disconnected.",
        "hostname-added" => "Hostname added.",
        "hostname-removed" => "Hostname removed.",
        "certificate-uploaded" => "Certificate stored: the relays serve it for its hostname.",
        "certificate-removed" => "Certificate removed: the relay's own serves the hostname.",
        "certificate-renew" => {
            "Renewal requested: the relays obtain a new certificate at their next check."
        }
        "deleted" => "Tenant deleted.",
        "token-revoked" => "API token revoked.",
        "node-draining" => {
            "Node draining: it applies this at its next heartbeat, then answers /readyz with 503, \
             asks its connectors to move and finishes what is in flight."
        }
        "node-resumed" => "Node active again: it takes new work from its next heartbeat on.",
        "queue-settings" => {
            "Queue settings saved: relays use them for the messages they accept next."
        }
        "queue-retried" => {
            "Message queued again: it is due now and goes out when a connector of the tenant is \
             online."
        }
        "queue-cancelled" => "Message cancelled: it will not be delivered.",
        "queue-discarded" => "Message discarded: it is deleted with its body and response.",
        "pairing" => {
            "Pairing mode saved: relays close open sockets the new mode refuses within seconds."
        }
        "pairing-token-revoked" => "Pairing token revoked: sockets admitted with it are closed.",
        _ => "",
    }
}

#[derive(Deserialize, Default)]
struct DoneQuery {
    #[serde(default)]
    done: String,
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    chrome: Chrome,
    title: String,
    back: String,
    secret: String,
    hint: String,
    example: String,
}

/// A query-string value, percent-encoded.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("../static/app.css"))
}

async fn js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(enc("x-y_z.~"), "x-y_z.~");
    }
}
