//! Key material in the data directory, generated on first start: the credential pepper, the
//! token signing key, the certificate key that seals hostname certificates' private keys in the
//! database, and (when no certificate is configured) a self-signed TLS certificate.
//! Files are created with mode 0600; nothing here ever goes to the database or a log. Each file
//! appears whole or not at all, and the first process to make it wins: nodes that start at the
//! same moment on one fresh data directory all end up with the same keys and certificate.
//!
//! Several relay nodes sharing one database must share `keys/` too (same pepper, same signing
//! key), e.g. from a secret store mounted at the same path.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{self, SecureRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

/// Why key material could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A file's content is not what it should be.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// The loaded key material.
pub struct Keys {
    /// HMAC key for credential hashes.
    pub pepper: Vec<u8>,
    /// Ed25519 PKCS#8 document for signing tokens.
    pub signing_pkcs8: Vec<u8>,
    /// The raw Ed25519 public key.
    pub verifying_key: Vec<u8>,
    /// AES-256 key sealing hostname certificates' private keys and ACME account credentials.
    pub certificate_key: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(***)")
    }
}

impl Keys {
    /// Loads `data_dir/keys/`, creating missing keys.
    pub fn load_or_create(data_dir: &Path) -> Result<Keys, KeyError> {
        let dir = data_dir.join("keys");
        create_dir(&dir)?;
        let pepper_path = dir.join("credential-pepper");
        let pepper = read_or_create(&pepper_path, || {
            let mut b = vec![0u8; 32];
            rand::SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| "random failed".to_string())?;
            Ok(b)
        })?;
        if pepper.len() < 32 {
            return Err(KeyError::Invalid(
                pepper_path,
                "pepper shorter than 32 bytes".into(),
            ));
        }
        let key_path = dir.join("token-ed25519.pk8");
        let signing_pkcs8 = read_or_create(&key_path, || {
            Ed25519KeyPair::generate_pkcs8(&rand::SystemRandom::new())
                .map(|doc| doc.as_ref().to_vec())
                .map_err(|_| "key generation failed".to_string())
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&signing_pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&signing_pkcs8))
            .map_err(|e| {
                KeyError::Invalid(key_path.clone(), format!("not an Ed25519 PKCS#8 key: {e}"))
            })?;
        let verifying_key = pair.public_key().as_ref().to_vec();
        let cert_key_path = certificate_key_path(data_dir);
        let certificate_key = read_or_create(&cert_key_path, random_32)?;
        if certificate_key.len() != 32 {
            return Err(KeyError::Invalid(
                cert_key_path,
                "the certificate key must be exactly 32 bytes".into(),
            ));
        }
        Ok(Keys {
            pepper,
            signing_pkcs8,
            verifying_key,
            certificate_key,
        })
    }

    /// The key sealing certificates' private keys in the database.
    pub fn certificate_key(&self) -> relay_store::CertificateKey {
        // The length was checked when loading: exactly 32 bytes is what AES-256 takes.
        relay_store::CertificateKey::new(&self.certificate_key)
            .expect("a 32-byte certificate key, checked at load")
    }
}

/// `data_dir/keys/certificate-key` (32 random bytes; every node of a cluster needs the same).
pub fn certificate_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("certificate-key")
}

fn random_32() -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; 32];
    rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "random failed".to_string())?;
    Ok(b)
}

/// Loads the configured certificate chain and key, or the generated self-signed pair.
pub fn tls_material(
    data_dir: &Path,
    configured: Option<&(PathBuf, PathBuf)>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let (cert_path, key_path) = match configured {
        Some((c, k)) => (c.clone(), k.clone()),
        None => self_signed(data_dir)?,
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| KeyError::Invalid(cert_path.clone(), e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| KeyError::Invalid(cert_path.clone(), e.to_string()))?;
    if certs.is_empty() {
        return Err(KeyError::Invalid(cert_path, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| KeyError::Invalid(key_path.clone(), format!("no usable private key: {e}")))?;
    Ok((certs, key))
}

/// The path of the generated certificate (whether or not it exists yet).
pub fn self_signed_cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.pem")
}

fn self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    let dir = data_dir.join("tls");
    create_dir(&dir)?;
    let cert_path = self_signed_cert_path(data_dir);
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    if key_path.exists() {
        // Another process (a node on the same data directory) is making the pair: its
        // certificate follows its key.
        wait_for(&cert_path)?;
        return Ok((cert_path, key_path));
    }
    warn!(
        cert = %cert_path.display(),
        "no TLS certificate configured: generating a self-signed certificate for localhost; \
         visitors and connectors must trust it explicitly (set [tls] cert and key for production)"
    );
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| {
        KeyError::Invalid(
            cert_path.clone(),
            format!("certificate generation failed: {e}"),
        )
    })?;
    if publish_private(&key_path, generated.signing_key.serialize_pem().as_bytes())? {
        // The key is ours, so the certificate must be too, replacing any left without its key.
        let tmp = temp_path(&cert_path);
        fs::write(&tmp, generated.cert.pem()).map_err(|e| KeyError::Io(tmp.clone(), e))?;
        fs::rename(&tmp, &cert_path).map_err(|e| KeyError::Io(cert_path.clone(), e))?;
    } else {
        wait_for(&cert_path)?;
    }
    Ok((cert_path, key_path))
}

/// How long a node waits for the certificate another process is making beside its key.
const CERT_WAIT: Duration = Duration::from_secs(10);

/// Waits (blocking: this is start-up, before anything is served) for `cert` to appear.
fn wait_for(cert: &Path) -> Result<(), KeyError> {
    let deadline = Instant::now() + CERT_WAIT;
    while !cert.exists() {
        if Instant::now() > deadline {
            return Err(KeyError::Invalid(
                cert.to_path_buf(),
                format!(
                    "missing beside its key.pem after {} s: remove key.pem, or set [tls] cert and key",
                    CERT_WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, KeyError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = make().map_err(|m| KeyError::Invalid(path.to_path_buf(), m))?;
            if publish_private(path, &bytes)? {
                Ok(bytes)
            } else {
                // Another process made it first: everyone keeps that one.
                fs::read(path).map_err(|e| KeyError::Io(path.to_path_buf(), e))
            }
        }
        Err(e) => Err(KeyError::Io(path.to_path_buf(), e)),
    }
}

fn create_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(|e| KeyError::Io(dir.to_path_buf(), e))
}

/// Makes `path` with `bytes`, readable by its owner only (0600), unless it exists; whether this
/// call made it. The bytes go to a temporary file first, which is then linked as `path` in one
/// step: another process sees the whole file or none, and of two racing, one wins. Where the file
/// system has no hard links, the file is written in place (the first to create it wins).
fn publish_private(path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
    let tmp = temp_path(path);
    write_private(&tmp, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => match write_private(path, bytes) {
            Ok(()) => Ok(true),
            Err(KeyError::Io(_, e)) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// A name beside `path` that no other process or call uses.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Writes a file only its owner can read (0600), failing if it exists.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
    f.write_all(bytes)
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
    f.sync_all()
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        let b = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!(a.pepper, b.pepper);
        assert_eq!(a.verifying_key, b.verifying_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["keys/credential-pepper", "keys/token-ed25519.pk8"] {
                let mode = fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let (certs, _key) = tls_material(dir.path(), None).unwrap();
        let (again, _) = tls_material(dir.path(), None).unwrap();
        assert_eq!(
            certs, again,
            "the self-signed certificate is generated once"
        );
    }

    /// Nodes starting at the same moment on one fresh data directory: each used to find the other's
    /// half-made files and stop with "File exists".
    #[test]
    fn racing_starts_share_one_set_of_keys_and_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let keys = Keys::load_or_create(&path).expect("keys");
                    let (certs, key) = tls_material(&path, None).expect("certificate");
                    (
                        keys.pepper,
                        keys.verifying_key,
                        certs,
                        key.secret_der().to_vec(),
                    )
                })
            })
            .collect();
        let seen: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "every start has the same material"
        );
        let left: Vec<_> = fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .chain(fs::read_dir(dir.path().join("tls")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
