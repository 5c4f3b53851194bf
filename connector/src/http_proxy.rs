//! Reaching the relay through an HTTP CONNECT proxy (corporate networks): one `CONNECT host:port`
//! request, optionally with Basic credentials, then TLS to the relay end to end through the tunnel
//! the proxy opened — the relay's certificate is verified as usual, so a TLS-inspecting proxy is
//! refused unless its CA was given with `--ca-cert`.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Proxy;

/// The longest proxy response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Why the proxy did not open a tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("cannot connect to proxy {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("proxy {0} did not answer CONNECT within {1:?}")]
    Timeout(String, Duration),
    #[error("proxy {0} requires authentication ({1}); give credentials in the proxy URL or proxy_credentials_file")]
    AuthRequired(String, u16),
    #[error("proxy {0} refused the credentials ({1})")]
    AuthRefused(String, u16),
    #[error("proxy {0} refused CONNECT to {1}: {2}")]
    Refused(String, String, String),
    #[error("proxy {0} sent an invalid answer: {1}")]
    Invalid(String, String),
    #[error("proxy {0}: {1}")]
    Io(String, std::io::Error),
}

/// Opens a TCP tunnel to `host:port` through `proxy`, within `timeout`.
pub(crate) async fn connect(
    proxy: &Proxy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let name = format!("{}:{}", proxy.host, proxy.port);
    tokio::time::timeout(timeout, handshake(proxy, &name, host, port))
        .await
        .map_err(|_| ProxyError::Timeout(name.clone(), timeout))?
}

async fn handshake(
    proxy: &Proxy,
    name: &str,
    host: &str,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| ProxyError::Connect(name.to_string(), e))?;
    let _ = stream.set_nodelay(true);
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: connector/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(credentials) = &proxy.credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials.expose());
        request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProxyError::Io(name.to_string(), e))?;

    // Read exactly the response head: the relay speaks only after our TLS ClientHello, so
    // nothing of the tunnel can follow it yet — any extra byte is a broken proxy.
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProxyError::Io(name.to_string(), e))?;
        if n == 0 {
            return Err(ProxyError::Invalid(
                name.to_string(),
                "connection closed before the answer to CONNECT".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find_head_end(&head) {
            break pos;
        }
        if head.len() > MAX_HEAD {
            return Err(ProxyError::Invalid(
                name.to_string(),
                "answer head over 16 KiB".into(),
            ));
        }
    };
    let status_line = head[..end]
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        ProxyError::Invalid(name.to_string(), format!("status line {status_line:?}"))
    })?;
    if !version.starts_with("HTTP/1.") {
        return Err(ProxyError::Invalid(
            name.to_string(),
            format!("status line {status_line:?}"),
        ));
    }
    match status {
        200..=299 => {}
        // 407 is the standard answer; some proxies (tinyproxy) send 401 to CONNECT.
        401 | 407 if proxy.credentials.is_some() => {
            return Err(ProxyError::AuthRefused(name.to_string(), status))
        }
        401 | 407 => return Err(ProxyError::AuthRequired(name.to_string(), status)),
        _ => {
            return Err(ProxyError::Refused(
                name.to_string(),
                target,
                status_line.chars().take(200).collect(),
            ))
        }
    }
    if head.len() > end {
        return Err(ProxyError::Invalid(
            name.to_string(),
            "bytes after the answer to CONNECT".into(),
        ));
    }
    Ok(stream)
}

/// The length of the head including its blank line, once complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_after_the_blank_line() {
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\n"), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
