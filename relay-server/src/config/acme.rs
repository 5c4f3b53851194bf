//! `[acme]`: certificates from an ACME CA for hostnames marked for it (docs/certificates.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use process_setup::layered::{self, ConfigError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// Obtain and renew certificates for hostnames marked for ACME. Default false.
    pub enabled: Option<bool>,
    /// The CA's directory URL (https). Default Let's Encrypt production.
    pub directory: Option<String>,
    /// Contact e-mail addresses for the account (the CA's expiry and policy mail).
    pub contact: Option<Vec<String>>,
    /// PEM root certificate(s) to trust for the CA's own HTTPS, instead of the system's (a
    /// private or test CA such as pebble).
    pub root_ca: Option<PathBuf>,
    /// Challenge types in the order tried: `tls-alpn-01` (on the HTTPS listener, which must be
    /// reachable on port 443) and `http-01` (on the plain-HTTP listener, port 80). Default both,
    /// TLS-ALPN-01 first.
    pub challenge: Option<Vec<String>>,
    /// How often to look for certificates due (besides every catalog change). Default 10 min.
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    /// The wait after a first failed issuance; it doubles per failure up to a day. Default 5 min.
    #[serde(default, with = "humantime_serde")]
    pub retry_initial: Option<Duration>,
    /// Deadline of each request to the CA. Default 30 s.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

/// A challenge type the relay can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01 on the plain-HTTP listener.
    Http01,
    /// TLS-ALPN-01 on the HTTPS listener.
    TlsAlpn01,
}

impl Challenge {
    /// The name in config and RFC 8555: `http-01`, `tls-alpn-01`.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[acme]`, validated: present only when enabled.
#[derive(Clone)]
pub struct Acme {
    /// Directory URL.
    pub directory: String,
    /// `mailto:` contacts.
    pub contact: Vec<String>,
    /// Roots for the CA's HTTPS, and the file they came from; `None`: the system's.
    pub root_ca: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// Challenge types in order (non-empty).
    pub challenges: Vec<Challenge>,
    /// Check period.
    pub check_interval: Duration,
    /// First retry wait.
    pub retry_initial: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.directory)
            .field("contact", &self.contact)
            .field("root_ca", &self.root_ca.as_ref().map(|r| &r.0))
            .field("challenges", &self.challenges)
            .field("check_interval", &self.check_interval)
            .field("retry_initial", &self.retry_initial)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Acme {
    /// `None` when disabled. `file` anchors a relative `root_ca`; `plain_http` says whether the
    /// plain-HTTP listener (needed for HTTP-01) is configured.
    pub fn from_file(
        raw: AcmeFile,
        file: Option<&Path>,
        plain_http: bool,
    ) -> Result<Option<Acme>, ConfigError> {
        if !raw.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
        if !directory.starts_with("https://") {
            return Err(ConfigError::new(format!(
                "acme.directory = {directory:?}: expected an https:// URL"
            )));
        }
        let contact = raw
            .contact
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let c = c.trim();
                let mail = c.strip_prefix("mailto:").unwrap_or(c);
                if mail.contains('@') && !mail.contains(char::is_whitespace) {
                    Ok(format!("mailto:{mail}"))
                } else {
                    Err(ConfigError::new(format!(
                        "acme.contact: {c:?} is not an e-mail address"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let root_ca = match raw.root_ca {
            None => None,
            Some(p) => {
                let path = layered::relative_to(file, &p);
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|e| {
                        ConfigError::new(format!("acme.root_ca {}: {e}", path.display()))
                    })?;
                if certs.is_empty() {
                    return Err(ConfigError::new(format!(
                        "acme.root_ca {}: no certificate found",
                        path.display()
                    )));
                }
                Some((path, certs))
            }
        };
        let names = raw
            .challenge
            .unwrap_or_else(|| vec!["tls-alpn-01".into(), "http-01".into()]);
        let mut challenges = Vec::new();
        for n in &names {
            let c = match n.as_str() {
                "tls-alpn-01" => Challenge::TlsAlpn01,
                "http-01" => Challenge::Http01,
                other => {
                    return Err(ConfigError::new(format!(
                        "acme.challenge: {other:?} is not one of tls-alpn-01, http-01"
                    )))
                }
            };
            if c == Challenge::Http01 && !plain_http {
                continue;
            }
            if !challenges.contains(&c) {
                challenges.push(c);
            }
        }
        if challenges.is_empty() {
            return Err(ConfigError::new(
                "acme.challenge: no usable challenge type (http-01 needs listen.http)",
            ));
        }
        Ok(Some(Acme {
            directory,
            contact,
            root_ca,
            challenges,
            check_interval: layered::duration(
                "acme.check_interval",
                raw.check_interval,
                Duration::from_secs(600),
                Some(Duration::from_millis(100)),
            )?,
            retry_initial: layered::duration(
                "acme.retry_initial",
                raw.retry_initial,
                Duration::from_secs(300),
                Some(Duration::from_millis(100)),
            )?,
            request_timeout: layered::duration(
                "acme.request_timeout",
                raw.request_timeout,
                Duration::from_secs(30),
                Some(Duration::from_millis(100)),
            )?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_by_default_and_checked_when_on() {
        assert!(Acme::from_file(AcmeFile::default(), None, true)
            .unwrap()
            .is_none());
        let on = |f: fn(&mut AcmeFile)| {
            let mut raw = AcmeFile {
                enabled: Some(true),
                ..AcmeFile::default()
            };
            f(&mut raw);
            Acme::from_file(raw, None, false)
        };
        let a = on(|r| r.contact = Some(vec!["ops@example.com".into()]))
            .unwrap()
            .unwrap();
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.contact, vec!["mailto:ops@example.com".to_string()]);
        // Without a plain-HTTP listener only TLS-ALPN-01 is left.
        assert_eq!(a.challenges, vec![Challenge::TlsAlpn01]);
        assert!(on(|r| r.challenge = Some(vec!["http-01".into()])).is_err());
        assert!(on(|r| r.challenge = Some(vec!["dns-01".into()])).is_err());
        assert!(on(|r| r.directory = Some("http://ca/dir".into())).is_err());
        assert!(on(|r| r.contact = Some(vec!["not mail".into()])).is_err());
        assert!(on(|r| r.root_ca = Some("/nonexistent.pem".into())).is_err());
    }
}
