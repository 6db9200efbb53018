//! TLS settings, one shape for every store and stream.
//!
//! Each store and stream reads the usual parameters of its ecosystem from its URL
//! (`sslmode`/`sslrootcert` for PostgreSQL, `ssl-mode`/`ssl-ca` for MySQL,
//! `amqps://` + `cacertfile` for RabbitMQ, `security.protocol`/`ssl.ca.location`
//! for Kafka, a CA bundle for the HTTP streams) into a [`Tls`], and its builder
//! takes a [`Tls`] through a `tls(..)` setter. Whatever the spelling:
//!
//! - verification of the certificate chain **and** the host name is the default
//!   whenever TLS is on ([`TlsMode::VerifyFull`]);
//! - [`TlsMode::VerifyCa`] checks the chain but not the name (libpq's
//!   `verify-ca`, MySQL's `VERIFY_CA`), for servers reached by an address their
//!   certificate does not name;
//! - turning verification off altogether is only possible through
//!   [`Tls::danger_accept_invalid_certificates`], named so that it stands out in
//!   review;
//! - a TLS failure at connect is [`Error::Tls`] with its
//!   [`TlsCause`]: `Outbox::start` refuses to start on it, and nothing is ever
//!   sent in plaintext in place of TLS.
//!
//! ```
//! use outboxer::tls::{Tls, TlsMode};
//!
//! let tls = Tls::verify_full().ca_file("/etc/ssl/certs/db-ca.pem");
//! assert_eq!(tls.mode(), TlsMode::VerifyFull);
//! assert!(Tls::default().mode() == TlsMode::Disabled);
//! ```

use crate::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// How a connection uses TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plaintext. A server that requires TLS refuses the connection
    /// ([`TlsCause::ServerRequiresTls`]).
    #[default]
    Disabled,
    /// TLS, the certificate chain verified against the CA, the host name not
    /// checked.
    VerifyCa,
    /// TLS, the chain verified and the host name (or IP address) checked against
    /// the certificate. The default whenever TLS is asked for.
    VerifyFull,
}

/// TLS settings of one connection: the mode, the CA to trust, an optional client
/// certificate, and the explicitly dangerous switch that turns verification off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    mode: TlsMode,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    accept_invalid: bool,
}

impl Tls {
    /// Plaintext (the default).
    pub fn disabled() -> Tls {
        Tls::default()
    }

    /// TLS with the chain and the host name verified.
    pub fn verify_full() -> Tls {
        Tls {
            mode: TlsMode::VerifyFull,
            ..Tls::default()
        }
    }

    /// TLS with the chain verified and the host name not checked.
    pub fn verify_ca() -> Tls {
        Tls {
            mode: TlsMode::VerifyCa,
            ..Tls::default()
        }
    }

    /// Trust the CA certificates of this PEM file instead of the built-in roots
    /// (your database's or broker's CA, a corporate CA).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Tls {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Tls {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Accept any certificate for any name: the connection is encrypted but anyone
    /// on the path can read and change it. For throwaway test servers only.
    pub fn danger_accept_invalid_certificates(mut self, accept: bool) -> Tls {
        self.accept_invalid = accept;
        self
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// True unless the mode is [`TlsMode::Disabled`].
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disabled
    }

    /// The CA file, if one was given.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate and key files, if given.
    pub fn client_cert_paths(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// True when verification was turned off with
    /// [`danger_accept_invalid_certificates`](Tls::danger_accept_invalid_certificates).
    pub fn accepts_invalid_certificates(&self) -> bool {
        self.accept_invalid
    }

    /// Checks the files exist and hold PEM certificates (and a key), so that a typo
    /// is a [`Error::Config`] at build time, not a handshake failure later.
    /// `field` names the setting in the error.
    pub fn check_files(&self, field: &'static str) -> Result<()> {
        if let Some(ca) = &self.ca_file {
            read_pem(field, ca, "CERTIFICATE")?;
        }
        if let Some((cert, key)) = &self.client_cert {
            read_pem(field, cert, "CERTIFICATE")?;
            read_pem(field, key, "PRIVATE KEY")?;
        }
        if !self.enabled() && (self.ca_file.is_some() || self.client_cert.is_some()) {
            return Err(Error::config(
                field,
                "a CA or client certificate was given but TLS is disabled",
            ));
        }
        Ok(())
    }
}

/// Reads a PEM file and checks it holds at least one block whose label ends
/// with `label` (`CERTIFICATE`, `PRIVATE KEY` also matching `RSA PRIVATE KEY`).
fn read_pem(field: &'static str, path: &Path, label: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::config(field, format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !found {
        return Err(Error::config(
            field,
            format!("{} holds no PEM {label}", path.display()),
        ));
    }
    Ok(bytes)
}

/// Why a TLS connection could not be made. Every cause is a setting to fix (on
/// this side or the server's), never an outage to wait out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsCause {
    /// The server's certificate does not chain to a trusted CA (wrong or missing
    /// CA file, self-signed, expired).
    CertificateNotTrusted,
    /// The certificate is valid but not for the host name or address connected to.
    HostnameMismatch,
    /// TLS was asked for and the server speaks plaintext only.
    ServerWithoutTls,
    /// Plaintext was asked for and the server requires TLS (or answered with TLS).
    ServerRequiresTls,
    /// Any other handshake failure (protocol versions, ciphers, client certificate).
    Handshake,
}

impl fmt::Display for TlsCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsCause::CertificateNotTrusted => "the server's certificate is not trusted",
            TlsCause::HostnameMismatch => "the server's certificate does not name this host",
            TlsCause::ServerWithoutTls => "TLS was required but the server does not speak TLS",
            TlsCause::ServerRequiresTls => "plaintext was asked for but the server requires TLS",
            TlsCause::Handshake => "the TLS handshake failed",
        })
    }
}
