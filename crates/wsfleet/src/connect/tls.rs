//! TLS client configuration: [`TlsOptions`] → `Arc<rustls::ClientConfig>`.
//!
//! Configurations are built with an explicit `ring` [`CryptoProvider`], so no
//! process-wide default provider has to be installed, and they are meant to be built
//! once and shared by every connection (building loads and parses a root store, which
//! is far too costly to repeat per connection in a fleet of thousands).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::error::{ConnectError, ConnectErrorKind, Phase};

/// Which built-in set of trusted root certificates to start from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Roots {
    /// The Mozilla root program bundle compiled into the binary (`webpki-roots`):
    /// the same on every machine, independent of the OS trust store.
    #[default]
    Webpki,
    /// The operating system's trust store (`rustls-native-certs`; honours
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`). Certificates it cannot parse are skipped
    /// with a warning; an empty store is an error.
    Native,
    /// No built-in roots: trust only [`TlsOptions::extra_ca_files`].
    None,
}

/// A client certificate chain and its private key, as PEM files, presented to
/// servers that ask for one (mutual TLS).
///
/// ```
/// use wsfleet::connect::{ClientIdentity, TlsOptions};
///
/// let mut tls = TlsOptions::default();
/// tls.client_identity = Some(ClientIdentity::new("client.pem", "client.key"));
/// // tls.build() reads both files and fails naming the one that is unusable.
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientIdentity {
    /// PEM file with the client certificate first, then any intermediates.
    pub cert_chain: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl ClientIdentity {
    /// The certificate chain in `cert_chain`, the private key in `key`.
    pub fn new(cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert_chain: cert_chain.into(),
            key: key.into(),
        }
    }

    /// Reads and parses both files.
    fn load(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConnectError> {
        let certs = CertificateDer::pem_file_iter(&self.cert_chain)
            .map_err(|e| identity_error(&self.cert_chain, pem_problem(e)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| identity_error(&self.cert_chain, pem_problem(e)))?;
        if certs.is_empty() {
            return Err(identity_error(
                &self.cert_chain,
                "no PEM \"BEGIN CERTIFICATE\" block found".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            let problem = match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key block found (PKCS#8, PKCS#1 or SEC1)".to_owned()
                }
                other => pem_problem(other),
            };
            identity_error(&self.key, problem)
        })?;
        Ok((certs, key))
    }
}

fn identity_error(path: &Path, problem: String) -> ConnectError {
    ConnectError::new(
        Phase::Tls,
        "",
        ConnectErrorKind::ClientIdentity {
            path: path.to_owned(),
            problem,
        },
    )
}

/// TLS settings for `wss://` connections.
///
/// The default trusts the `webpki-roots` bundle, sends SNI taken from the URL host
/// (none for an IP literal, which is verified against the certificate's IP SANs) and
/// offers no ALPN.
///
/// Build once with [`TlsOptions::build`] and share the resulting `Arc` across
/// connections.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// The built-in roots to start from.
    pub roots: Roots,
    /// PEM files with extra CA certificates to trust (every `CERTIFICATE` block in
    /// each file), added to [`roots`](Self::roots).
    pub extra_ca_files: Vec<PathBuf>,
    /// **Dangerous: turns off server authentication.** The server's certificate
    /// chain, name and validity are not checked at all (the handshake signature
    /// still is), so anyone on the path can impersonate the server and read and
    /// change all traffic. For tests against throwaway servers only; never in
    /// production. Every [`build`](Self::build) with this set logs a warning.
    pub insecure_skip_verify: bool,
    /// A client certificate and key to present when the server asks for one
    /// (mutual TLS). `None`: no client authentication.
    pub client_identity: Option<ClientIdentity>,
    /// ALPN protocols to offer, in preference order (empty: no ALPN extension).
    /// The WebSocket handshake is HTTP/1.1, so offer `b"http/1.1"` if the server
    /// requires ALPN.
    pub alpn: Vec<Vec<u8>>,
}

impl TlsOptions {
    /// Builds a rustls client configuration from these options, using the `ring`
    /// crypto provider and rustls' safe default protocol versions (TLS 1.2 and 1.3).
    ///
    /// This loads and parses certificates; do it once and share the result.
    ///
    /// # Errors
    ///
    /// A [`ConnectError`] with [`Phase::Tls`] and an empty target:
    /// [`ConnectErrorKind::CaFile`] (naming the path) if an extra CA file cannot be
    /// read, holds no certificate, or holds one that is not a usable trust anchor;
    /// [`ConnectErrorKind::NoTrustAnchors`] if the result would trust nothing
    /// (`Roots::None` without CA files, or an empty native store) and
    /// `insecure_skip_verify` is off; [`ConnectErrorKind::ClientIdentity`]
    /// (naming the file) if the client certificate or key cannot be read, or
    /// the key does not match the certificate.
    pub fn build(&self) -> Result<Arc<ClientConfig>, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;

        let builder = if self.insecure_skip_verify {
            tracing::warn!(
                "TLS certificate verification is DISABLED (insecure_skip_verify): \
                 any server can impersonate the target; do not use in production"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
        } else {
            builder.with_root_certificates(self.root_store()?)
        };
        let mut config = match &self.client_identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (certs, key) = identity.load()?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    identity_error(
                        &identity.key,
                        format!(
                            "not usable with the certificate in {}: {e}",
                            identity.cert_chain.display()
                        ),
                    )
                })?
            }
        };
        config.alpn_protocols.clone_from(&self.alpn);
        Ok(Arc::new(config))
    }

    fn root_store(&self) -> Result<RootCertStore, ConnectError> {
        let mut store = RootCertStore::empty();
        match self.roots {
            Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::Native => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "while loading the native trust store");
                }
                let (added, ignored) = store.add_parsable_certificates(found.certs);
                if ignored > 0 {
                    tracing::warn!(added, ignored, "skipped unusable native root certificates");
                }
                if added == 0 && self.extra_ca_files.is_empty() {
                    let why = match found.errors.first() {
                        Some(e) => format!("the native trust store is empty ({e})"),
                        None => "the native trust store is empty".to_owned(),
                    };
                    return Err(no_trust_anchors(why));
                }
            }
            Roots::None => {
                if self.extra_ca_files.is_empty() {
                    return Err(no_trust_anchors(
                        "roots = None and no extra_ca_files".to_owned(),
                    ));
                }
            }
        }
        for path in &self.extra_ca_files {
            add_ca_file(&mut store, path)?;
        }
        Ok(store)
    }
}

/// Adds every certificate in the PEM file at `path`; all of them must be usable.
fn add_ca_file(store: &mut RootCertStore, path: &Path) -> Result<(), ConnectError> {
    let ca_error = |problem: String| {
        ConnectError::new(
            Phase::Tls,
            "",
            ConnectErrorKind::CaFile {
                path: path.to_owned(),
                problem,
            },
        )
    };
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(pem_problem(e)))?;
    let mut count = 0usize;
    for cert in certs {
        let cert = cert.map_err(|e| ca_error(pem_problem(e)))?;
        count += 1;
        store
            .add(cert)
            .map_err(|e| ca_error(format!("certificate #{count} is not a usable CA: {e}")))?;
    }
    if count == 0 {
        return Err(ca_error(
            "no PEM \"BEGIN CERTIFICATE\" block found".to_owned(),
        ));
    }
    tracing::debug!(path = %path.display(), count, "added extra CA certificates");
    Ok(())
}

fn pem_problem(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("invalid PEM: {other}"),
    }
}

fn config_error(e: rustls::Error) -> ConnectError {
    ConnectError::new(Phase::Tls, "", ConnectErrorKind::Tls(e))
}

fn no_trust_anchors(why: String) -> ConnectError {
    ConnectError::new(Phase::Tls, "", ConnectErrorKind::NoTrustAnchors(why))
}

/// The configuration `open` uses for `wss` when the caller passes none:
/// `TlsOptions::default().build()`, built once per process.
pub(crate) fn default_config() -> Result<Arc<ClientConfig>, ConnectError> {
    // A `Result` is cached so that a failure is not retried per connection either;
    // with the compiled-in roots it cannot fail in practice. Concurrent first callers
    // block briefly on the one that builds, instead of each building its own.
    static DEFAULT: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    match DEFAULT.get_or_init(|| {
        TlsOptions::default()
            .build()
            .map_err(|e| super::Chain(&e).to_string())
    }) {
        Ok(config) => Ok(Arc::clone(config)),
        Err(why) => Err(ConnectError::new(
            Phase::Tls,
            "",
            ConnectErrorKind::Other(why.clone().into()),
        )),
    }
}

/// Accepts any server certificate; still checks the handshake signatures, so the
/// peer at least holds the key for the certificate it sent.
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(file)
    }

    #[test]
    fn default_builds_and_is_cached() {
        let a = default_config().unwrap();
        let b = default_config().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.alpn_protocols.is_empty());
    }

    #[test]
    fn extra_ca_only_builds() {
        let opts = TlsOptions {
            roots: Roots::None,
            extra_ca_files: vec![data("ca.pem")],
            alpn: vec![b"http/1.1".to_vec()],
            ..TlsOptions::default()
        };
        let config = opts.build().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_ca_file_names_the_path() {
        let missing = data("does-not-exist.pem");
        let opts = TlsOptions {
            extra_ca_files: vec![missing.clone()],
            ..TlsOptions::default()
        };
        let e = opts.build().unwrap_err();
        assert_eq!(e.phase(), Phase::Tls);
        match e.kind() {
            ConnectErrorKind::CaFile { path, .. } => assert_eq!(path, &missing),
            other => panic!("expected CaFile, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn ca_file_without_certificates_is_rejected() {
        // A key file holds PEM, but no CERTIFICATE block.
        let opts = TlsOptions {
            roots: Roots::None,
            extra_ca_files: vec![data("server.key")],
            ..TlsOptions::default()
        };
        let e = opts.build().unwrap_err();
        assert!(matches!(e.kind(), ConnectErrorKind::CaFile { .. }), "{e}");
        assert!(e.to_string().contains("server.key"), "{e}");
    }

    #[test]
    fn no_roots_at_all_is_rejected_unless_insecure() {
        let opts = TlsOptions {
            roots: Roots::None,
            ..TlsOptions::default()
        };
        let e = opts.build().unwrap_err();
        assert!(
            matches!(e.kind(), ConnectErrorKind::NoTrustAnchors(_)),
            "{e}"
        );

        let opts = TlsOptions {
            roots: Roots::None,
            insecure_skip_verify: true,
            ..TlsOptions::default()
        };
        opts.build().unwrap();
    }

    #[test]
    fn client_identity_builds() {
        let opts = TlsOptions {
            roots: Roots::None,
            extra_ca_files: vec![data("ca.pem")],
            client_identity: Some(ClientIdentity::new(data("client.pem"), data("client.key"))),
            ..TlsOptions::default()
        };
        let config = opts.build().unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn client_identity_problems_name_the_file() {
        let missing = data("no-such-client.key");
        let cases = [
            // The key file is missing.
            (data("client.pem"), missing.clone(), missing, "No such file"),
            // A key where the certificate should be.
            (
                data("client.key"),
                data("client.key"),
                data("client.key"),
                "CERTIFICATE",
            ),
            // A certificate where the key should be.
            (
                data("client.pem"),
                data("client.pem"),
                data("client.pem"),
                "private key",
            ),
            // A key that belongs to another certificate.
            (
                data("client.pem"),
                data("server.key"),
                data("server.key"),
                "client.pem",
            ),
        ];
        for (cert, key, at_fault, says) in cases {
            let opts = TlsOptions {
                client_identity: Some(ClientIdentity::new(&cert, &key)),
                ..TlsOptions::default()
            };
            let e = opts.build().unwrap_err();
            match e.kind() {
                ConnectErrorKind::ClientIdentity { path, .. } => assert_eq!(path, &at_fault),
                other => panic!("expected ClientIdentity, got {other:?}"),
            }
            let msg = e.to_string();
            assert!(msg.contains(&*at_fault.to_string_lossy()), "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
    }
}
