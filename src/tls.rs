//! HTTPS serving with rustls (API.md section 11): the certificate and key come from PEM files,
//! are swapped atomically when reloaded (SIGHUP), and TLS handshakes run off the accept loop so
//! a slow client cannot hold up others.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::serve::{Listener, ListenerExt as _};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCert(PathBuf),
    #[error("cannot read the private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the private key {path} cannot be used: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The crypto provider for inbound and outbound TLS: ring, which reqwest's rustls already uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Adds the PEM certificates in `pem` to `roots`: an error when it holds none, or one that cannot
/// be a root. (Outbound deliveries' `extra_ca_certs` and PostgreSQL's `sslrootcert`.)
pub fn add_pem_roots(roots: &mut rustls::RootCertStore, pem: &[u8]) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads a certificate chain and its private key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let bad_key = |source| TlsError::BadKey {
        path: key.to_path_buf(),
        source,
    };
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(bad_key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(bad_key)?;
    Ok(certified)
}

/// Hands every handshake the current certificate; `reload` swaps it without touching
/// connections already established.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let current = load_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(current),
        }))
    }

    /// Reads the files again; on any problem the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // HTTP/1.1 only: the server is built without axum's `http2` feature, so offering h2
        // could hand a client a protocol nobody on this side speaks.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A listener that yields connections whose TLS handshake is done, for `serve::serve`.
pub struct TlsListener<IO = TcpStream> {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<IO>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `tcp` until `shutdown`, handshaking each connection in its own task.
    pub fn new(
        tcp: TcpListener,
        config: ServerConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let tcp = tcp.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        TlsListener::over(tcp, config, shutdown)
    }
}

impl<IO> TlsListener<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Handshakes, each in its own task, the connections `inner` accepts until `shutdown`.
    /// (The server's `inner` admits connections under its caps first: a connection refused
    /// costs no handshake.)
    pub fn over<L>(
        mut inner: L,
        config: ServerConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener<IO>>
    where
        L: Listener<Io = IO, Addr = SocketAddr>,
    {
        let local = inner.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = inner.accept() => accepted,
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl<IO> Listener for TlsListener<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = TlsStream<IO>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop has stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
