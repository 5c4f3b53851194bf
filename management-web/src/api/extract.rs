//! The API's request extractors: JSON object bodies and query parameters, whose rejections are
//! [`ApiError`]s like every other failure.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{ApiError, Error};

/// A JSON object body. A wrong content type (415) and unparsable JSON (400) are
/// [`Error::Rejected`]; a body that is not an object, or not of `T`'s shape, is
/// [`Error::Validation`] (422). Nested objects are checked by [`object`].
#[derive(Debug)]
pub(super) struct Body<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, ApiError> {
        let value = match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(e) => return Err(Error::Rejected(e.status(), e.body_text()).into()),
        };
        if !value.is_object() {
            return Err(Error::Validation("the body must be a JSON object".into()).into());
        }
        T::deserialize(value)
            .map(Body)
            .map_err(|e| Error::Validation(e.to_string()).into())
    }
}

/// Query parameters; unknown or malformed ones are [`Error::BadQuery`] (400).
#[derive(Debug)]
pub(super) struct Params<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params<T>, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(Error::BadQuery(e.body_text()).into()),
        }
    }
}

/// A nested object field: a JSON object or `null`, never an array. (serde fills a struct from
/// a sequence by position, so `{"limits": [5, null]}` would otherwise set a limit.)
pub(super) fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let map = Option::<serde_json::Map<String, Value>>::deserialize(d)?;
    map.map(|m| T::deserialize(Value::Object(m)).map_err(serde::de::Error::custom))
        .transpose()
}

/// `Some(None)` when the field is `null`, `None` when it is absent.
pub(super) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `json` as a POSTed body of type `T`, or the status it is refused with.
#[cfg(test)]
pub(super) async fn parse<T: DeserializeOwned>(json: &str) -> Result<T, axum::http::StatusCode> {
    let req = Request::builder()
        .method("POST")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(json.to_string()))
        .unwrap();
    Body::<T>::from_request(req, &())
        .await
        .map(|Body(v)| v)
        .map_err(|e| e.0.outcome().status)
}
