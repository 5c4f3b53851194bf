//! Logging in and out: the login form, counted before the password is checked
//! (`limiter`), and the session cookie.

use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{guard, render, CsrfForm, Form, PageResult};
use crate::auth::{self, Admin, PeerIp, Served};
use crate::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: String,
    username: String,
}

pub(super) async fn page() -> Response {
    render(
        StatusCode::OK,
        &LoginPage {
            error: String::new(),
            username: String::new(),
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

pub(super) async fn submit(
    State(state): State<AppState>,
    PeerIp(ip): PeerIp,
    Served(served): Served,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    auth::same_origin(&headers, served.as_deref())?;
    let username: String = form.username.trim().chars().take(200).collect();
    let page = |status, error: &str| {
        render(
            status,
            &LoginPage {
                error: error.to_string(),
                username: username.clone(),
            },
        )
    };
    let too_many = |wait: Duration, error: &str| {
        let mut res = page(StatusCode::TOO_MANY_REQUESTS, error);
        // Rounded up: a client that waits exactly this long finds the slot free.
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    };
    if form.password.len() > 1024 {
        return Ok(page(StatusCode::BAD_REQUEST, "That password is too long."));
    }
    // Counted before the check, in the same lock as the limit: concurrent attempts cannot all
    // pass a limit that none of them has reached yet.
    let attempt = match state.limiter().reserve(ip, &username) {
        Ok(attempt) => attempt,
        Err(wait) => {
            return Ok(too_many(
                wait,
                "Too many failed logins. Wait a while and try again.",
            ))
        }
    };
    let user = match state
        .store()
        .verify_admin_password(&username, &form.password)
        .await
    {
        Ok(user) => user,
        Err(relay_store::Error::HashingBusy) => {
            state.limiter().release(attempt);
            return Ok(too_many(
                HASHING_BUSY_RETRY,
                "The server is busy checking other logins. Try again in a moment.",
            ));
        }
        Err(e) => {
            state.limiter().release(attempt);
            return Err(e.into());
        }
    };
    let Some(user) = user else {
        state.limiter().failed(attempt);
        tracing::info!(%ip, "failed admin login");
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.",
        ));
    };
    state.limiter().succeeded(attempt);
    // A new session id at every login; a session the browser still had ends here.
    if let Some(old) = auth::session_cookie(&headers) {
        let _ = state.store().delete_web_session(&old).await;
    }
    let ttl = i64::try_from(auth::SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
    let new = state.store().create_web_session(&user, ttl).await?;
    tracing::info!(user = %user.username, %ip, "admin logged in");
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&new.cookie)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// `Retry-After` when every password-hashing slot stayed busy (the store waited 2 s already).
const HASHING_BUSY_RETRY: Duration = Duration::from_secs(2);

pub(super) async fn logout(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    if let Some(cookie) = auth::session_cookie(&headers) {
        state.store().delete_web_session(&cookie).await?;
    }
    let mut res = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}
