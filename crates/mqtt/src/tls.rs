//! TLS for `mqtts://` brokers: a rustls client configuration from the `tls:` settings.
//!
//! The roots are the PEM certificate authorities of `tls.ca_file`, or the system's roots
//! (`rustls-native-certs`) when none is given. A client certificate and key (mutual TLS) are
//! optional. The crypto provider is aws-lc-rs, the one rustls already carries for the S3
//! client (`object_store` through reqwest), so TLS adds no second crypto library.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tributary_core::config::ConfigError;

use crate::config::TlsConfig;

fn bad(field: &str, message: String) -> ConfigError {
    ConfigError::Value {
        field: format!("source.tls.{field}"),
        message,
    }
}

fn certificates(field: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(field, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            field,
            format!("{path}: no PEM certificate in the file"),
        ));
    }
    Ok(certs)
}

/// The rustls configuration for `settings` (paths already resolved).
pub(crate) fn client_config(settings: &TlsConfig) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(ca) => {
            let path = ca.resolve("source.tls.ca_file")?;
            for cert in certificates("ca_file", &path)? {
                roots
                    .add(cert)
                    .map_err(|e| bad("ca_file", format!("{path}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system root is skipped, as browsers and curl do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(bad(
                    "ca_file",
                    "no system root certificates found: give the broker's CA as tls.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("ca_file", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&settings.client_cert, &settings.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let cert_path = cert.resolve("source.tls.client_cert")?;
            let key_path = key.resolve("source.tls.client_key")?;
            let chain = certificates("client_cert", &cert_path)?;
            let key = PrivateKeyDer::from_pem_file(Path::new(&key_path))
                .map_err(|e| bad("client_key", format!("{key_path}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client_key", format!("{key_path}: {e}")))?
        }
        _ => {
            return Err(bad(
                "client_cert",
                "client_cert and client_key go together (mutual TLS)".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}
