//! The cluster CA and node certificates of both planes (mutual TLS): `armature cert init` writes
//! `ca.pem` plus `<node>.pem` and `<node>.key` for every node into the certificates directory, and
//! the CA's key beside it, never in it (`ca_key_path`): the directory is what nodes are given, and
//! whoever holds the CA key can make certificates for any node name. A node loads its own pair and
//! the CA, serves with its certificate, and accepts only peers whose certificate the CA signed
//! (and only servers that present one, under the node name it dialled).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::aead::AeadLibrary;
use crate::records::BulkCipher;

/// The ALPN protocol of the KV data plane.
pub const ALPN: &[u8] = b"armature-kv/1";

/// The ALPN protocol of the KV data plane's TLS-over-TCP path.
pub const TCP_ALPN: &[u8] = b"armature-kv-tcp/1";

/// The same path with AEGIS-128X2 records after the handshake (`aegis_records`), offered first
/// by a node whose `transport.bulk_cipher` names it.
pub const TCP_AEGIS_ALPN: &[u8] = b"armature-kv-tcp-aegis/1";

/// The ALPN protocol of the control plane (ractor_cluster over TLS), so that neither plane's
/// connection can be taken for the other's.
pub const CONTROL_ALPN: &[u8] = b"armature-control/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a PEM {what}: {detail}")]
    Pem { path: PathBuf, what: &'static str, detail: String },
    #[error("{path} exists; remove the directory's certificates first or pick another directory")]
    Exists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

/// The DNS name a node's certificate carries (node names may hold `_`, which DNS names may not).
pub fn server_name(node: &str) -> String {
    format!("{}.nodes.armature", node.replace('_', "-"))
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    std::fs::write(path, text).map_err(|source| CertError::Io { path: path.into(), source })
}

/// Write a private key readable by its owner only (0600), whatever the umask, also over a file
/// that was there before.
fn write_secret(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| CertError::Io { path: path.into(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// Where `init` keeps the CA's key for certificates directory `dir`: beside it, as
/// `<dir>.ca.key` (so `certs/prod` has `certs/prod.ca.key`).
pub fn ca_key_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map_or_else(|| "certs".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.ca.key"))
}

/// Write a new CA and a certificate for each node (`(name, addresses)`) into `dir`, and the CA's
/// key to `ca_key_path(dir)`. Refuses to overwrite an existing CA.
pub fn init(dir: &Path, nodes: &[(String, Vec<IpAddr>)]) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.into(), source })?;
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(CertError::Exists { path: ca_path });
    }
    if ca_key_path(dir).exists() {
        return Err(CertError::Exists { path: ca_key_path(dir) });
    }
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "armature cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&ca_path, &ca_cert.pem())?;
    let ca_key_path = ca_key_path(dir);
    write_secret(&ca_key_path, &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let mut written = vec![ca_path, ca_key_path];
    for (name, addrs) in nodes {
        let mut p = CertificateParams::new(vec![server_name(name)])?;
        p.subject_alt_names.extend(addrs.iter().map(|a| SanType::IpAddress(*a)));
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        write(&cert_path, &cert.pem())?;
        write_secret(&key_path, &key.serialize_pem())?;
        written.push(cert_path);
    }
    Ok(written)
}

/// A node's TLS material: the cluster CA, its certificate and its key.
#[derive(Debug)]
pub struct Identity {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

fn read_pem<T: PemObject>(path: &Path, what: &'static str) -> Result<T, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Io { path: path.into(), source })?;
    T::from_pem_slice(&bytes).map_err(|e| CertError::Pem { path: path.into(), what, detail: e.to_string() })
}

impl Identity {
    /// Load `node`'s pair and the CA from `dir` (as `init` wrote them).
    pub fn load(dir: &Path, node: &str) -> Result<Self, CertError> {
        Ok(Self {
            ca: read_pem(&dir.join("ca.pem"), "certificate")?,
            cert: read_pem(&dir.join(format!("{node}.pem")), "certificate")?,
            key: read_pem(&dir.join(format!("{node}.key")), "private key")?,
        })
    }

    /// From PEM text (tests, and callers that keep certificates elsewhere).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Self, CertError> {
        let pem = |what, detail: rustls::pki_types::pem::Error| CertError::Pem {
            path: PathBuf::from("<memory>"),
            what,
            detail: detail.to_string(),
        };
        Ok(Self {
            ca: CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| pem("certificate", e))?,
            cert: CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| pem("certificate", e))?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| pem("private key", e))?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, CertError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| CertError::Tls(format!("the CA certificate: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// rustls server settings of the data plane's QUIC path, its crypto from `library`: this
    /// node's certificate, client certificates required and checked against the CA.
    pub fn server_tls(&self, library: AeadLibrary) -> Result<rustls::ServerConfig, CertError> {
        self.server_tls_with(&[ALPN], Arc::new(library.rustls_provider()))
    }

    /// rustls client settings of the data plane's QUIC path, its crypto from `library`: servers
    /// checked against the CA; this node's certificate offered.
    pub fn client_tls(&self, library: AeadLibrary) -> Result<rustls::ClientConfig, CertError> {
        self.client_tls_with(&[ALPN], Arc::new(library.rustls_provider()))
    }

    /// The same pair for the data plane's TLS-over-TCP path: with `cipher` AEGIS-128X2, both
    /// record layers are offered and accepted, AEGIS first (a server picks the first of its own
    /// protocols that the client offers); with TLS, only TLS records.
    pub fn tcp_tls(
        &self,
        library: AeadLibrary,
        cipher: BulkCipher,
    ) -> Result<(rustls::ServerConfig, rustls::ClientConfig), CertError> {
        let provider = Arc::new(library.rustls_provider());
        let protocols: &[&[u8]] = match cipher {
            BulkCipher::Aegis128X2 => &[TCP_AEGIS_ALPN, TCP_ALPN],
            BulkCipher::Tls => &[TCP_ALPN],
        };
        let (mut server, mut client) =
            (self.server_tls_with(protocols, provider.clone())?, self.client_tls_with(protocols, provider)?);
        // No tickets: only application data may follow the handshake (`records`).
        server.send_tls13_tickets = 0;
        // The record layer takes the traffic keys over after the handshake.
        server.enable_secret_extraction = true;
        client.enable_secret_extraction = true;
        Ok((server, client))
    }

    /// The same pair for the control plane.
    pub fn control_tls(&self) -> Result<(rustls::ServerConfig, rustls::ClientConfig), CertError> {
        Ok((self.server_tls_for(CONTROL_ALPN)?, self.client_tls_for(CONTROL_ALPN)?))
    }

    fn server_tls_for(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, CertError> {
        self.server_tls_with(&[alpn], Arc::new(rustls::crypto::ring::default_provider()))
    }

    fn server_tls_with(
        &self,
        alpn: &[&[u8]],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<rustls::ServerConfig, CertError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| CertError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CertError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| CertError::Tls(e.to_string()))?;
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tls)
    }

    fn client_tls_for(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, CertError> {
        self.client_tls_with(&[alpn], Arc::new(rustls::crypto::ring::default_provider()))
    }

    fn client_tls_with(
        &self,
        alpn: &[&[u8]],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<rustls::ClientConfig, CertError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CertError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| CertError::Tls(e.to_string()))?;
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_and_node_pairs_that_load() {
        let dir = std::env::temp_dir().join(format!("armature-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(ca_key_path(&dir));
        let nodes = vec![("n0".to_string(), vec!["127.0.0.1".parse().unwrap()]), ("n_1".to_string(), vec![])];
        // A node key left over with loose permissions is tightened when it is written again.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("n0.key"), "old").unwrap();
        std::fs::set_permissions(dir.join("n0.key"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let written = init(&dir, &nodes).unwrap();
        assert_eq!(written.len(), 4);
        assert!(!dir.join("ca.key").exists(), "the CA key is not among what nodes are given");
        let ca_key = ca_key_path(&dir);
        assert_eq!(ca_key.parent(), dir.parent());
        assert!(ca_key.to_string_lossy().ends_with(".ca.key"));
        let mode = |f: &str| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join(f)).unwrap().permissions()) & 0o777
        };
        for key in ["n0.key", "n_1.key"] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        let ca_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ca_key).unwrap().permissions());
        assert_eq!(ca_mode & 0o777, 0o600);
        assert_eq!(mode("n0.pem") & 0o600, 0o600, "certificates stay readable");
        for n in ["n0", "n_1"] {
            let id = Identity::load(&dir, n).unwrap();
            id.server_tls(AeadLibrary::Ring).unwrap();
            id.client_tls(AeadLibrary::AwsLc).unwrap();
            id.control_tls().unwrap();
            id.tcp_tls(AeadLibrary::fastest(), BulkCipher::Aegis128X2).unwrap();
        }
        assert!(matches!(init(&dir, &nodes), Err(CertError::Exists { .. })), "never overwrites a CA");
        let err = Identity::load(&dir, "n9").unwrap_err().to_string();
        assert!(err.contains("n9.pem"), "{err}");
        std::fs::write(dir.join("bad.pem"), "not pem").unwrap();
        std::fs::copy(dir.join("n0.key"), dir.join("bad.key")).unwrap();
        assert!(Identity::load(&dir, "bad").unwrap_err().to_string().contains("not a PEM certificate"));
        assert_eq!(server_name("n_1"), "n-1.nodes.armature");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&ca_key).unwrap();
    }
}
