//! TLS where the test machine's servers allow it: the local PostgreSQL serves TLS
//! (Debian's self-signed "snakeoil" certificate), so the PostgreSQL store is run
//! over TLS with `sslmode=require` (no plaintext fallback) and the session is
//! checked in `pg_stat_ssl`. The certificate is self-signed, so this test's
//! verifier accepts any certificate: it proves the store speaks TLS, not PKI.

use outboxer::store::{PostgresStore, Store};
use outboxer::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

fn connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

fn url() -> String {
    let base = std::env::var("OUTBOXER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}sslmode=require&application_name=outboxer_tls_test")
}

#[test]
fn postgres_store_over_tls() {
    let mut plain = postgres::Client::connect(
        &url().replace("sslmode=require", "sslmode=disable"),
        postgres::NoTls,
    )
    .expect("PostgreSQL on 127.0.0.1:5432");
    let ssl: String = plain.query_one("SHOW ssl", &[]).expect("show ssl").get(0);
    assert_eq!(
        ssl, "on",
        "this machine's PostgreSQL serves TLS (Debian default); if not, this test cannot run"
    );

    // Without a TLS connector, sslmode=require fails closed.
    assert!(matches!(
        PostgresStore::connect(&url()),
        Err(outboxer::Error::Database { .. })
    ));

    let table = format!("tls_{}", std::process::id());
    let store = PostgresStore::builder(&url())
        .table(&table)
        .tls(connector())
        .build()
        .expect("TLS store");
    store.migrate().expect("migrate over TLS");
    let m = Message::new(b"over tls".to_vec());
    store
        .enqueue(std::slice::from_ref(&m))
        .expect("enqueue over TLS");
    let lease = outboxer::store::Lease::new(std::time::Duration::from_secs(30));
    let got = store
        .claim(&lease, 10.into())
        .expect("claim over TLS")
        .messages;
    assert_eq!(got.first().map(|g| g.message_id), Some(m.message_id()));

    // The store's sessions are TLS sessions.
    let config: postgres::Config = url().parse().expect("valid URL");
    let mut tls = config.connect(connector()).expect("TLS client");
    let row = tls
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'outboxer_tls_test' AND s.pid <> pg_backend_pid()",
            &[],
        )
        .expect("pg_stat_ssl");
    let (with_tls, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        with_tls >= 1,
        "the store's connections use TLS ({with_tls} of {all})"
    );
    let _ = plain.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""));
}
