//! TLS for the server: rustls with the ring provider, a certificate chain and key from PEM
//! files, reloaded with the users on SIGHUP (so a renewed certificate needs no restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use cairn_store::{Error, Result};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the certificate chain and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("reading {}: {e}", path.display()))
}

/// A rustls server configuration from the PEM files: TLS 1.2 and 1.3, HTTP/1.1.
///
/// The ring provider is deprecated by rustls 0.23.48 for lacking post-quantum key exchange;
/// it is used because aws-lc (the provider that has it) needs cmake and builds several times
/// slower; key exchange stays classical ECDHE (X25519, P-256).
#[allow(deprecated)]
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_error(&files.cert, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| pem_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::invalid(format!("TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration the listener uses, and the files to reload it from.
#[derive(Debug, Clone)]
pub struct Tls {
    pub files: TlsFiles,
    pub config: RustlsConfig,
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Tls> {
        let config = RustlsConfig::from_config(server_config(&files)?);
        Ok(Tls { files, config })
    }

    /// Reads the files again; on failure the configuration in force stays.
    pub fn reload(&self) -> Result<()> {
        self.config.reload_from_config(server_config(&self.files)?);
        Ok(())
    }
}
