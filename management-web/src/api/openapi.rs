//! The OpenAPI 3.1 document of the API, built from the route table ([`ROUTES`]) with the
//! patterns and ranges the actions enforce.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::ROUTES;
use crate::actions::audit::STATUS_PATTERN;
use crate::actions::queue::MAX_QUOTA;
use crate::actions::tenants::MAX_LIMIT_VALUE;
use crate::actions::{MAX_LIMIT, MAX_OFFSET};
use crate::auth::ApiAdmin;

/// Tenant and target names as requests may give them: the naming rule, case-insensitive (they
/// are stored lowercase); see `relay_store::validate_name`.
pub(crate) const NAME_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$";
/// Tenant and target names as answers show them (canonical, lowercase).
pub(crate) const CANONICAL_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// Hostnames as requests may give them: two or more labels of 1–63 letters, digits and `-`
/// (not first or last), case-insensitive, one optional trailing dot; at most 253 characters
/// without it. See `relay_store::canonical_hostname`.
pub(crate) const HOSTNAME_PATTERN: &str = r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.?$";
/// Hostnames as answers show them (canonical: lowercase, no trailing dot).
pub(crate) const CANONICAL_HOSTNAME_PATTERN: &str =
    r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// `GET /api/v1/openapi.json`.
pub(super) async fn serve(_: ApiAdmin) -> Response {
    Json(openapi_document()).into_response()
}

/// The schema of a path or query parameter, with the ranges and patterns the handlers enforce.
fn parameter_schema(name: &str, ty: &str) -> Value {
    match name {
        "name" => json!({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}),
        "hostname" => json!({"type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 254}),
        "offset" => json!({"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        "status" => json!({"type": "string", "pattern": STATUS_PATTERN}),
        "node" => {
            json!({"type": "string", "minLength": 1, "description": "a node id, or a name only one live node has"})
        }
        _ => json!({"type": ty}),
    }
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": parameter_schema(p, "string")}))
            .collect();
        params.extend(r.query.iter().map(|(name, ty, desc)| {
            json!({"name": name, "in": "query", "required": false, "description": desc, "schema": parameter_schema(name, ty)})
        }));
        let (status, schema) = r.response;
        let success = match schema {
            Some(s) => {
                json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}})
            }
            None if r.operation == "openapi" => {
                json!({"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}})
            }
            None => json!({"description": "done"}),
        };
        let problem_ref = |what: &str| json!({"description": what, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        let mut responses = serde_json::Map::new();
        responses.insert(status.to_string(), success);
        responses.insert("401".into(), problem_ref("no valid API token"));
        if !r.query.is_empty() {
            responses.insert(
                "400".into(),
                problem_ref("a query parameter is unknown, malformed or out of range"),
            );
        }
        if r.request.is_some() {
            responses.insert("400".into(), problem_ref("the body is not JSON"));
            responses.insert(
                "422".into(),
                problem_ref("the body is not an object of the schema (arrays, unknown fields, wrong types) or a value is invalid"),
            );
        }
        if r.path.contains("/queue/messages/{id}") {
            responses.insert("404".into(), problem_ref("no queue message has that id"));
            if r.method == "post" {
                responses.insert(
                    "409".into(),
                    problem_ref("the message is in a state that does not allow this (or its body is no longer stored, for a retry)"),
                );
            }
        }
        if r.path.contains("{node}") {
            responses.insert(
                "404".into(),
                problem_ref("no live relay node has that name or id"),
            );
            responses.insert(
                "409".into(),
                problem_ref("several live relay nodes have that name: give the node id"),
            );
        }
        responses.insert("default".into(), problem_ref("error"));
        let mut op = json!({
            "operationId": r.operation,
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(req) = r.request {
            op["requestBody"] = json!({"required": true, "description": "a JSON object (never an array)", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let nullable =
        |min: u64, max: u64| json!({"type": ["integer", "null"], "minimum": min, "maximum": max});
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    let name_in = json!({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63, "description": "case-insensitive; stored lowercase"});
    let name_out = json!({"type": "string", "pattern": CANONICAL_NAME_PATTERN, "maxLength": 63});
    let host_in = json!({"type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 254, "description": "a DNS name, case-insensitive, at most 253 characters without the optional trailing dot; stored lowercase"});
    let host_out =
        json!({"type": "string", "pattern": CANONICAL_HOSTNAME_PATTERN, "maxLength": 253});
    // Answers may show a 0 set through the CLI; requests must give 1 or more.
    let limits = |what: &str, min: u64| {
        json!({"type": "object", "additionalProperties": false, "description": what, "properties": {
            "max_body_bytes": nullable(min, MAX_LIMIT_VALUE),
            "max_concurrent_streams": nullable(min, u64::from(u32::MAX)),
            "request_timeout_ms": nullable(min, MAX_LIMIT_VALUE)}})
    };
    let paging = |items: &str| {
        json!({"type": "object", "properties": {
            "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{items}")}},
            "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}})
    };
    let mut tenant_list = paging("Tenant");
    tenant_list["properties"]["total"] = json!({"type": "integer", "minimum": 0});
    let mut schemas = serde_json::Map::new();
    schemas.insert("Problem".into(), json!({"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}));
    schemas.insert("Limits".into(), limits("null: the relay's default", 0));
    schemas.insert(
        "LimitsPatch".into(),
        limits(
            "an absent field is kept; null returns to the relay's default; 0 is refused",
            1,
        ),
    );
    schemas.insert("Tenant".into(), json!({"type": "object", "required": ["name", "display_name", "description", "enabled", "audit_query_strings", "limits", "created_at"], "properties": {
                    "name": name_out, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "enabled": {"type": "boolean"}, "audit_query_strings": {"type": "boolean"},
                    "limits": {"$ref": "#/components/schemas/Limits"}, "created_at": time}}));
    schemas.insert("TenantList".into(), tenant_list);
    schemas.insert("NewTenant".into(), json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": name_in, "display_name": {"type": "string"}, "description": {"type": "string"}}}));
    schemas.insert("TenantPatch".into(), json!({"type": "object", "additionalProperties": false, "properties": {
                    "enabled": {"type": "boolean"}, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "audit_query_strings": {"type": "boolean"}, "limits": {"oneOf": [{"$ref": "#/components/schemas/LimitsPatch"}, {"type": "null"}]}}}));
    schemas.insert("Credential".into(), json!({"type": "object", "properties": {"id": {"type": "string"}, "label": {"type": "string"}, "created_at": time, "last_used_at": nullable_time, "revoked_at": nullable_time}}));
    schemas.insert("CredentialList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Credential"}}}}));
    schemas.insert("NewCredential".into(), json!({"type": "object", "additionalProperties": false, "properties": {"label": {"type": "string", "description": "the first 200 characters are kept"}}}));
    schemas.insert("CreatedCredential".into(), json!({"type": "object", "required": ["id", "secret"], "properties": {"id": {"type": "string"}, "secret": {"type": "string"}, "label": {"type": "string"}, "created_at": time}}));
    schemas.insert(
        "Hostname".into(),
        json!({"type": "object", "properties": {"hostname": host_out, "target": name_out,
            "acme": {"type": "boolean", "description": "the relays obtain its certificate from the ACME CA"},
            "certificate": {"oneOf": [{"$ref": "#/components/schemas/Certificate"}, {"type": "null"}]}}}),
    );
    schemas.insert("Certificate".into(), json!({"type": "object", "properties": {
                    "hostname": {"type": "string"}, "source": {"type": "string", "enum": ["acme", "upload"]},
                    "serial": {"type": "string", "description": "the leaf's serial number, hex"},
                    "not_before": time, "not_after": time}}));
    schemas.insert("CertificateUpload".into(), json!({"type": "object", "additionalProperties": false, "required": ["certificate", "private_key"], "properties": {
                    "certificate": {"type": "string", "description": "PEM chain, leaf first"},
                    "private_key": {"type": "string", "description": "PEM private key; stored sealed, never shown again"}}}));
    schemas.insert("HostnameList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Hostname"}}}}));
    schemas.insert("NewHostname".into(), json!({"type": "object", "additionalProperties": false, "required": ["hostname", "target"], "properties": {"hostname": host_in, "target": name_in, "acme": {"type": "boolean", "default": false}}}));
    schemas.insert("Connection".into(), json!({"type": "object", "properties": {
                    "id": {"type": "string"}, "transport": {"type": "string", "enum": ["quic", "tcp"]}, "remote_addr": {"type": "string"},
                    "connector_id": {"type": "string"}, "connector_version": {"type": "string"}, "connected_at": time,
                    "relay_node": {"type": "string"}, "in_flight_streams": {"type": ["integer", "null"], "minimum": 0, "description": "known when the answering process is the relay node holding the session"}}}));
    schemas.insert("ConnectionList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Connection"}}}}));
    schemas.insert("Request".into(), json!({"type": "object", "properties": {
                    "request_id": {"type": "string"}, "tenant": {"type": "string"}, "target": {"type": "string"}, "method": {"type": "string"},
                    "path": {"type": "string"}, "status": {"type": "integer"}, "outcome": {"type": "string", "enum": ["ok", "visitor-aborted", "backend-error", "timeout", "refused"]},
                    "bytes_in": {"type": "integer", "minimum": 0}, "bytes_out": {"type": "integer", "minimum": 0}, "duration_ms": {"type": "integer", "minimum": 0},
                    "visitor": {"type": "string"}, "session_id": {"type": "string"}, "relay_node": {"type": "string"}, "created_at": time}}));
    schemas.insert("RequestList".into(), paging("Request"));
    schemas.insert("Node".into(), json!({"type": "object", "required": ["id", "name", "advertise", "state", "started_at", "heartbeat_at", "heartbeat_age_ms", "sessions"], "properties": {
                    "id": {"type": "string", "description": "fresh for every start of the relay process"},
                    "name": {"type": "string", "description": "its node_name; two nodes on one host may share it"},
                    "advertise": {"type": ["string", "null"], "description": "the address its peers reach it on"},
                    "state": {"type": "string", "enum": ["active", "draining"], "description": "as asked; the node applies it at its next heartbeat"},
                    "started_at": time, "heartbeat_at": time,
                    "heartbeat_age_ms": {"type": "integer", "minimum": 0},
                    "sessions": {"type": "integer", "minimum": 0, "description": "connector sessions it holds"}}}));
    let states = json!([
        "queued",
        "delivering",
        "delivered",
        "failed",
        "expired",
        "cancelled"
    ]);
    let quota = |what: &str| json!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_QUOTA, "description": what});
    schemas.insert("Queue".into(), json!({"type": "object", "required": ["tenant", "settings", "counts", "oldest_queued_at", "oldest_queued_age_ms"], "properties": {
                    "tenant": name_out,
                    "settings": {"$ref": "#/components/schemas/QueueSettings"},
                    "counts": {"type": "object", "description": "messages in each state (every state is present)", "propertyNames": {"enum": states.clone()}, "additionalProperties": {"type": "integer", "minimum": 0}},
                    "oldest_queued_at": nullable_time,
                    "oldest_queued_age_ms": {"type": ["integer", "null"], "minimum": 0, "description": "how long the oldest queued message has waited"}}}));
    schemas.insert("QueueSettings".into(), json!({"type": "object", "description": "null: the relays' [queue] default", "properties": {
                    "order": {"type": "string", "enum": ["parallel", "ordered"], "description": "ordered: per target, a message waits until the one before it is final"},
                    "ttl_ms": {"type": ["integer", "null"], "minimum": 1, "description": "time to live of new messages"},
                    "max_messages": quota("most messages waiting (queued or delivering)"),
                    "max_bytes": quota("most body bytes waiting")}}));
    let pairing_token = json!({"id": {"type": "string"}, "peer_id": {"type": ["string", "null"], "description": "the one peer id it admits, or null for any"},
                    "label": {"type": "string"}, "created_at": time, "revoked_at": nullable_time});
    schemas.insert(
        "PairingToken".into(),
        json!({"type": "object", "properties": pairing_token}),
    );
    schemas.insert("Pairing".into(), json!({"type": "object", "properties": {
                    "tenant": name_out, "mode": {"type": "string", "enum": ["off", "open", "token"]},
                    "tokens": {"type": "array", "items": {"$ref": "#/components/schemas/PairingToken"}}}}));
    schemas.insert("PairingPatch".into(), json!({"type": "object", "additionalProperties": false, "required": ["mode"], "properties": {
                    "mode": {"type": "string", "enum": ["off", "open", "token"]}}}));
    schemas.insert("NewPairingToken".into(), json!({"type": "object", "additionalProperties": false, "properties": {
                    "peer_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128, "description": "admit only this peer id"},
                    "label": {"type": "string", "description": "the first 200 characters are kept"}}}));
    let cidrs = json!({"type": "array", "maxItems": 1000, "items": {"type": "string", "description": "ADDR or ADDR/PREFIX"}});
    let rule = |on: Value| json!({"description": "\"off\" overrides a wider scope; absent inherits", "oneOf": [{"const": "off"}, {"type": "object", "additionalProperties": false, "required": ["on"], "properties": {"on": on}}]});
    schemas.insert("PolicyRules".into(), json!({"type": "object", "additionalProperties": false, "description": "per rule kind, the most specific scope that sets it wins (hostname, target, tenant); see docs/policies.md", "properties": {
                    "allow_ip": cidrs.clone(), "deny_ip": cidrs,
                    "api_key": rule(json!({"type": "object", "additionalProperties": false, "required": ["header"], "properties": {"header": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$", "default": "x-relay-key"}}})),
                    "basic": rule(json!({"type": "object", "additionalProperties": false, "required": ["realm", "users"], "properties": {"realm": {"type": "string", "maxLength": 100}, "users": {"type": "object", "description": "user name → argon2id PHC string (relay-server tenant policy basic-user hashes one); answers list the names only", "additionalProperties": {"type": "string", "pattern": "^\\$argon2id\\$"}}}})),
                    "jwt": rule(json!({"type": "object", "additionalProperties": false, "required": ["issuer", "audience", "algorithms", "leeway_secs"], "description": "keys, jwks_url or both", "properties": {
                        "issuer": {"type": "string", "minLength": 1}, "audience": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "algorithms": {"type": "array", "minItems": 1, "items": {"enum": relay_store::JWT_ALGORITHMS}},
                        "jwks_url": {"type": "string", "maxLength": 2048, "description": "https:// (http:// on loopback only); fetched and cached by the relays"},
                        "keys": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["pem"], "properties": {"kid": {"type": "string"}, "pem": {"type": "string", "description": "a PEM public key"}}}},
                        "leeway_secs": {"type": "integer", "minimum": 0, "maximum": relay_store::MAX_JWT_LEEWAY_SECS}}})),
                    "rate_limit": rule(json!({"type": "object", "additionalProperties": false, "required": ["per_minute", "burst"], "properties": {"per_minute": {"type": "integer", "minimum": 1}, "burst": {"type": "integer", "minimum": 1}}})),
                    "cors": rule(json!({"type": "object", "additionalProperties": false, "required": ["allow_origins", "allow_methods"], "properties": {
                        "allow_origins": {"type": "array", "minItems": 1, "items": {"type": "string", "description": "scheme://host[:port], or *"}},
                        "allow_methods": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "allow_headers": {"type": "array", "items": {"type": "string", "description": "a header name, or *"}},
                        "allow_credentials": {"type": "boolean", "default": false},
                        "max_age_secs": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 0}}}))}}));
    schemas.insert("ScopedPolicy".into(), json!({"type": "object", "properties": {
                    "scope": {"type": "string", "description": "tenant, target:NAME or host:HOSTNAME"},
                    "rules": {"$ref": "#/components/schemas/PolicyRules"}}}));
    schemas.insert("Policies".into(), json!({"type": "object", "properties": {
                    "tenant": name_out, "policies": {"type": "array", "items": {"$ref": "#/components/schemas/ScopedPolicy"}}}}));
    let api_key = json!({"id": {"type": "string"}, "label": {"type": "string"}, "created_at": time, "revoked_at": nullable_time});
    schemas.insert(
        "ApiKey".into(),
        json!({"type": "object", "properties": api_key}),
    );
    schemas.insert("ApiKeyList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}}}));
    schemas.insert("NewApiKey".into(), json!({"type": "object", "additionalProperties": false, "properties": {
                    "label": {"type": "string", "description": "the first 200 characters are kept"}}}));
    let mut created_key = api_key.clone();
    created_key["key"] = json!({"type": "string", "description": "rak_…, shown only here; visitors send it in the policy's header (default x-relay-key)"});
    schemas.insert(
        "CreatedApiKey".into(),
        json!({"type": "object", "required": ["id", "key"], "properties": created_key}),
    );
    let mut created = pairing_token.clone();
    created["token"] = json!({"type": "string", "description": "rpt_…, shown only here; apps put it in their base URL wss://RELAY/pair/TENANT/TOKEN"});
    schemas.insert(
        "CreatedPairingToken".into(),
        json!({"type": "object", "required": ["id", "token"], "properties": created}),
    );
    schemas.insert("QueueSettingsPatch".into(), json!({"type": "object", "additionalProperties": false, "description": "an absent field is kept; null returns to the relays' default; values out of range get 422", "properties": {
                    "order": {"type": "string", "enum": ["parallel", "ordered"]},
                    "ttl_ms": {"type": ["integer", "null"], "minimum": 1000, "description": "at most the relays' queue.max_ttl (default 30 days)"},
                    "max_messages": quota("most messages waiting"),
                    "max_bytes": quota("most body bytes waiting")}}));
    let message = json!({
        "id": {"type": "string", "description": "the id in the message's status URL"},
        "tenant": name_out, "target": name_out, "method": {"type": "string"},
        "path": {"type": "string", "description": "below the target, with the query"},
        "state": {"type": "string", "enum": states},
        "attempts": {"type": "integer", "minimum": 0, "description": "delivery attempts so far"},
        "last_error": {"type": ["string", "null"]},
        "body_bytes": {"type": "integer", "minimum": 0},
        "idempotency_key": {"type": ["string", "null"]},
        "created_at": time, "expires_at": time,
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time", "description": "when queued"},
        "finished_at": nullable_time,
        "response_status": {"type": ["integer", "null"], "description": "the stored backend response's status"},
        "response_truncated": {"type": "boolean"},
        "purged": {"type": "boolean", "description": "the retention period is over: bodies, headers and response are gone"}});
    schemas.insert(
        "QueueMessage".into(),
        json!({"type": "object", "properties": message.clone()}),
    );
    schemas.insert("QueueMessageList".into(), json!({"type": "object", "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/QueueMessage"}},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}}));
    schemas.insert("StoredHeader".into(), json!({"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "value": {"type": "string"},
                    "value_base64": {"type": "string", "description": "instead of value, when it is not UTF-8"}}}));
    schemas.insert("BodyPreview".into(), json!({"type": "object", "properties": {
                    "encoding": {"type": "string", "enum": ["text", "base64"]},
                    "data": {"type": "string"},
                    "bytes": {"type": "integer", "minimum": 0, "maximum": relay_store::PREVIEW_BYTES, "description": "bytes shown (the first KiB at most)"},
                    "complete": {"type": "boolean", "description": "the whole body is shown"}}}));
    let headers = json!({"type": "array", "items": {"$ref": "#/components/schemas/StoredHeader"}});
    let body = json!({"oneOf": [{"$ref": "#/components/schemas/BodyPreview"}, {"type": "null"}], "description": "null when no longer stored"});
    let mut detail = message;
    detail["retryable"] = json!({"type": "boolean", "description": "failed or expired with its request body still stored"});
    detail["request"] =
        json!({"type": "object", "properties": {"headers": headers.clone(), "body": body.clone()}});
    detail["response"] = json!({"type": ["object", "null"], "properties": {"status": {"type": "integer"}, "truncated": {"type": "boolean"}, "headers": headers, "body": body}});
    schemas.insert(
        "QueueMessageDetail".into(),
        json!({"type": "object", "properties": detail}),
    );
    schemas.insert("QueueDiscard".into(), json!({"type": "object", "properties": {
                    "id": {"type": "string"},
                    "result": {"type": "string", "enum": ["cancelled", "deleted"], "description": "cancelled: it was queued; deleted: it was failed, expired or cancelled"},
                    "message": {"oneOf": [{"$ref": "#/components/schemas/QueueMessage"}, {"type": "null"}], "description": "as it is now (null once deleted)"}}}));
    schemas.insert("NodeList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Relay management API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an admin API token (rat_…); the scheme name is case-insensitive"}},
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_states_patterns_and_ranges() {
        let doc = openapi_document();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["NewTenant"]["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            s["Tenant"]["properties"]["name"]["pattern"],
            CANONICAL_NAME_PATTERN
        );
        assert_eq!(
            s["NewHostname"]["properties"]["hostname"]["pattern"],
            HOSTNAME_PATTERN
        );
        assert_eq!(
            s["NewHostname"]["properties"]["target"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            s["LimitsPatch"]["properties"]["max_body_bytes"]["minimum"],
            1
        );
        let list = &doc["paths"]["/api/v1/tenants"]["get"]["parameters"];
        let param = |n: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == n)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("offset")["minimum"], 0);
        assert_eq!(param("limit")["minimum"], 1);
        assert_eq!(param("limit")["maximum"], MAX_LIMIT);
    }
}
