//! `/api/v1`: the management REST API (JSON, `Authorization: Bearer rat_…`), an adapter over
//! the action layer: each handler parses its input, calls an action and writes the answer.
//!
//! The route table [`ROUTES`] is the single source: the router is built from it and
//! `/api/v1/openapi.json` is generated from it (`openapi`), so the document cannot drift from
//! the routes. Errors are RFC 9457 problem documents ([`ApiError`]). A request body must be a
//! JSON object of the documented shape: arrays (where serde would fill a struct by position),
//! unknown fields and wrong types get 422, unparsable JSON 400 (`extract`). Query parameters
//! that are unknown, malformed or out of the documented range get 400.

mod connections;
mod credentials;
mod extract;
mod hostnames;
mod nodes;
mod openapi;
mod pairing;
mod policies;
mod queue;
mod requests;
mod tenants;

use axum::response::Response;
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub use openapi::openapi_document;

/// One API operation.
#[derive(Debug)]
pub struct ApiRoute {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// The path, with `{param}` segments.
    pub path: &'static str,
    /// The OpenAPI operation id.
    pub operation: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// The request body's schema, if any.
    pub request: Option<&'static str>,
    /// The success status and its body's schema, if any.
    pub response: (u16, Option<&'static str>),
    /// Query parameters: (name, schema type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
}

const PAGING: &[(&str, &str, &str)] = &[
    (
        "q",
        "string",
        "only tenants whose name or display name contains this",
    ),
    ("offset", "integer", "skip this many (default 0)"),
    (
        "limit",
        "integer",
        "at most this many (default 50, at most 1000)",
    ),
];

const REQUEST_FILTERS: &[(&str, &str, &str)] = &[
    ("tenant", "string", "only this tenant"),
    ("status", "string", "a status (`502`) or a class (`5xx`)"),
    (
        "since",
        "string",
        "RFC 3339 time or ms since the epoch; records at or after it",
    ),
    (
        "until",
        "string",
        "RFC 3339 time or ms since the epoch; records before it",
    ),
    (
        "limit",
        "integer",
        "at most this many (default 100, at most 1000)",
    ),
    ("offset", "integer", "skip this many (default 0)"),
];

const MESSAGE_FILTERS: &[(&str, &str, &str)] = &[
    (
        "state",
        "string",
        "only messages in this state: queued, delivering, delivered, failed, expired, cancelled",
    ),
    (
        "limit",
        "integer",
        "at most this many (default 50, at most 1000)",
    ),
];

/// Every route of the API.
pub static ROUTES: &[ApiRoute] = &[
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants",
        operation: "listTenants",
        summary: "List tenants (paged, by name)",
        request: None,
        response: (200, Some("TenantList")),
        query: PAGING,
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants",
        operation: "createTenant",
        summary: "Create a tenant",
        request: Some("NewTenant"),
        response: (201, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}",
        operation: "getTenant",
        summary: "Read a tenant",
        request: None,
        response: (200, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "patch",
        path: "/api/v1/tenants/{name}",
        operation: "updateTenant",
        summary: "Enable or disable a tenant, change its settings and limits",
        request: Some("TenantPatch"),
        response: (200, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}",
        operation: "deleteTenant",
        summary: "Delete a tenant with its credentials and hostnames; its sessions close",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/credentials",
        operation: "listCredentials",
        summary: "List a tenant's connector credentials (never their secrets)",
        request: None,
        response: (200, Some("CredentialList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/credentials",
        operation: "createCredential",
        summary: "Create a connector credential; the secret appears only in this response",
        request: Some("NewCredential"),
        response: (201, Some("CreatedCredential")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/credentials/{id}",
        operation: "revokeCredential",
        summary: "Revoke a credential; sessions using it close",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/hostnames",
        operation: "listHostnames",
        summary: "List a tenant's hostnames",
        request: None,
        response: (200, Some("HostnameList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/hostnames",
        operation: "addHostname",
        summary: "Route a hostname to one of the tenant's targets",
        request: Some("NewHostname"),
        response: (201, Some("Hostname")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/hostnames/{hostname}",
        operation: "removeHostname",
        summary: "Remove a hostname",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "put",
        path: "/api/v1/tenants/{name}/hostnames/{hostname}/certificate",
        operation: "putCertificate",
        summary: "Upload the hostname's certificate (PEM chain and key; checked; turns ACME off)",
        request: Some("CertificateUpload"),
        response: (200, Some("Certificate")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/hostnames/{hostname}/certificate",
        operation: "deleteCertificate",
        summary: "Remove the hostname's certificate (the relay's own serves it)",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/hostnames/{hostname}/certificate/renew",
        operation: "renewCertificate",
        summary: "Obtain a new ACME certificate for the hostname at the relays' next check",
        request: None,
        response: (202, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/connections",
        operation: "listConnections",
        summary: "The tenant's live connector sessions on every relay node",
        request: None,
        response: (200, Some("ConnectionList")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/pairing",
        operation: "getPairing",
        summary: "A tenant's pairing mode and pairing tokens (never the tokens themselves)",
        request: None,
        response: (200, Some("Pairing")),
        query: &[],
    },
    ApiRoute {
        method: "patch",
        path: "/api/v1/tenants/{name}/pairing",
        operation: "updatePairing",
        summary: "Turn pairing off, open, or token mode; open sockets the new mode refuses are closed",
        request: Some("PairingPatch"),
        response: (200, Some("Pairing")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/pairing/tokens",
        operation: "createPairingToken",
        summary: "Create a pairing token, optionally bound to one peer id; the token appears only in this response",
        request: Some("NewPairingToken"),
        response: (201, Some("CreatedPairingToken")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/pairing/tokens/{id}",
        operation: "revokePairingToken",
        summary: "Revoke a pairing token; sockets using it close",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/policies",
        operation: "getPolicies",
        summary: "A tenant's visitor access policies by scope (Basic users without their hashes)",
        request: None,
        response: (200, Some("Policies")),
        query: &[],
    },
    ApiRoute {
        method: "put",
        path: "/api/v1/tenants/{name}/policies/{scope}",
        operation: "replacePolicy",
        summary: "Replace the rules of one scope (tenant, target:NAME, host:HOSTNAME); {} removes them",
        request: Some("PolicyRules"),
        response: (200, Some("ScopedPolicy")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/api-keys",
        operation: "listApiKeys",
        summary: "A tenant's visitor API keys (never the keys themselves)",
        request: None,
        response: (200, Some("ApiKeyList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/api-keys",
        operation: "createApiKey",
        summary: "Create a visitor API key; the key appears only in this response",
        request: Some("NewApiKey"),
        response: (201, Some("CreatedApiKey")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/api-keys/{id}",
        operation: "revokeApiKey",
        summary: "Revoke a visitor API key; relays refuse it within a second",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/queue",
        operation: "getQueue",
        summary: "A tenant's queue settings, its messages by state and how long the oldest has waited",
        request: None,
        response: (200, Some("Queue")),
        query: &[],
    },
    ApiRoute {
        method: "patch",
        path: "/api/v1/tenants/{name}/queue",
        operation: "updateQueue",
        summary: "Change a tenant's queue settings (order, time to live, quotas)",
        request: Some("QueueSettingsPatch"),
        response: (200, Some("Queue")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/queue/messages",
        operation: "listQueueMessages",
        summary: "A tenant's queue messages, newest first",
        request: None,
        response: (200, Some("QueueMessageList")),
        query: MESSAGE_FILTERS,
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/queue/messages/{id}",
        operation: "getQueueMessage",
        summary: "A queue message: status, request headers, the first KiB of its body and of its response",
        request: None,
        response: (200, Some("QueueMessageDetail")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/queue/messages/{id}/retry",
        operation: "retryQueueMessage",
        summary: "Put a failed or expired message back in the queue, due now, with a fresh time to live",
        request: None,
        response: (200, Some("QueueMessage")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/queue/messages/{id}/discard",
        operation: "discardQueueMessage",
        summary: "Cancel a queued message, or delete a failed, expired or cancelled one",
        request: None,
        response: (200, Some("QueueDiscard")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/requests",
        operation: "listRequests",
        summary: "Audit records, newest first",
        request: None,
        response: (200, Some("RequestList")),
        query: REQUEST_FILTERS,
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/nodes",
        operation: "listNodes",
        summary: "The live relay nodes sharing the database, with their sessions",
        request: None,
        response: (200, Some("NodeList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/nodes/{node}/drain",
        operation: "drainNode",
        summary: "Ask a relay node (name or id) to drain; it applies this at its next heartbeat",
        request: None,
        response: (200, Some("Node")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/nodes/{node}/resume",
        operation: "resumeNode",
        summary: "Ask a draining relay node (name or id) to take work again",
        request: None,
        response: (200, Some("Node")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/openapi.json",
        operation: "openapi",
        summary: "This document",
        request: None,
        response: (200, None),
        query: &[],
    },
];

/// The handler of an operation (the table above names them).
fn handler(operation: &str) -> MethodRouter<AppState> {
    match operation {
        "listTenants" => get(tenants::list),
        "createTenant" => post(tenants::create),
        "getTenant" => get(tenants::read),
        "updateTenant" => patch(tenants::update),
        "deleteTenant" => delete(tenants::delete),
        "listCredentials" => get(credentials::list),
        "createCredential" => post(credentials::create),
        "revokeCredential" => delete(credentials::revoke),
        "listHostnames" => get(hostnames::list),
        "addHostname" => post(hostnames::add),
        "removeHostname" => delete(hostnames::remove),
        "putCertificate" => put(hostnames::put_certificate),
        "deleteCertificate" => delete(hostnames::delete_certificate),
        "renewCertificate" => post(hostnames::renew_certificate),
        "listConnections" => get(connections::list),
        "getPairing" => get(pairing::read),
        "updatePairing" => patch(pairing::update),
        "createPairingToken" => post(pairing::create_token),
        "revokePairingToken" => delete(pairing::revoke_token),
        "getPolicies" => get(policies::read),
        "replacePolicy" => put(policies::replace),
        "listApiKeys" => get(policies::list_keys),
        "createApiKey" => post(policies::create_key),
        "revokeApiKey" => delete(policies::revoke_key),
        "getQueue" => get(queue::read),
        "updateQueue" => patch(queue::update),
        "listQueueMessages" => get(queue::messages),
        "getQueueMessage" => get(queue::message),
        "retryQueueMessage" => post(queue::retry),
        "discardQueueMessage" => post(queue::discard),
        "listRequests" => get(requests::list),
        "listNodes" => get(nodes::list),
        "drainNode" => post(nodes::drain),
        "resumeNode" => post(nodes::resume),
        "openapi" => get(openapi::serve),
        other => unreachable!("route table names an unknown operation {other}"),
    }
}

/// The API's router, built from [`ROUTES`]. Unknown routes under `/api/` get the app's
/// fallback (a problem document).
pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r.path, handler(r.operation));
    }
    router
}

/// What a handler answers.
type ApiResult = Result<Response, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_once() {
        let doc = openapi_document();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = ROUTES
                    .iter()
                    .find(|r| r.path == path && r.method == method)
                    .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
                assert_eq!(op["operationId"], r.operation);
                n += 1;
            }
        }
        assert_eq!(n, ROUTES.len());
        // Building the router checks that each operation has a handler.
        let _ = router();
    }
}
