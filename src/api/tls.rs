//! TLS for the API (`--tls-cert`, `--tls-key`: PEM files), with rustls. The files are read again
//! when they change (checked at most once a second, on new connections), so a renewed certificate
//! takes effect without a restart; a renewal that does not load is logged and the old one kept.
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The certificate chain and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn load(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("reading the key {}: {e}", files.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

struct Current {
    acceptor: TlsAcceptor,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// The TLS acceptor, reloaded when the files change.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl Tls {
    /// Loads the files (an error here stops the server from starting).
    pub fn new(files: TlsFiles) -> anyhow::Result<Self> {
        let stamps = (modified(&files.cert), modified(&files.key));
        let acceptor = TlsAcceptor::from(load(&files)?);
        Ok(Self {
            files,
            current: Mutex::new(Current {
                acceptor,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The acceptor for a new connection (the files' latest good version).
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.checked.elapsed().as_secs() >= 1 {
            cur.checked = Instant::now();
            let stamps = (modified(&self.files.cert), modified(&self.files.key));
            if stamps != cur.stamps {
                // A pair caught mid-renewal (new certificate, old key) does not load: the old one
                // stays, and the files are tried again a second later.
                match load(&self.files) {
                    Ok(cfg) => {
                        cur.stamps = stamps;
                        cur.acceptor = TlsAcceptor::from(cfg);
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::error!("TLS certificate not reloaded, the old one stays: {e}")
                    }
                }
            }
        }
        cur.acceptor.clone()
    }
}
