use super::decode::{decode, json_cell};
use super::*;

#[test]
fn store_and_transaction_are_thread_safe() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>() {}
    send_sync::<SqlServerStore>();
    send::<SqlServerTx<'static>>();
}

#[test]
fn connection_strings_are_redacted() {
    for raw in [
        "server=tcp:h,1;user=sa;password=s3cret;encrypt=maybe",
        "sqlserver://sa:s3cret@h:1433/db",
        "jdbc:sqlserver://h:1;password={s3;cret}",
    ] {
        let r = crate::core::redact::redact_connection_string(raw);
        assert!(!r.contains("s3"), "{r}");
    }
    match SqlServerStore::builder("server=tcp:h,1;user=sa;password=s3cret;encrypt=maybe").build() {
        Err(Error::InvalidUrl { url, .. }) => {
            assert!(
                !url.contains("s3cret") && url.contains("password=***"),
                "{url}"
            );
        }
        other => panic!("{other:?}"),
    }
    match SqlServerStore::connect("sqlserver://sa:s3cret@h:1433") {
        Err(e @ Error::InvalidUrl { .. }) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn settings_are_checked_before_connecting() {
    let url = "server=tcp:127.0.0.1,1;user=sa;password=x";
    let e = SqlServerStore::builder(url).table("a;b").build();
    assert!(matches!(e, Err(Error::InvalidIdentifier { .. })), "{e:?}");
    let e = SqlServerStore::builder(url)
        .connect_timeout(Duration::ZERO)
        .build();
    assert!(
        matches!(
            e,
            Err(Error::Config {
                field: "connect_timeout",
                ..
            })
        ),
        "{e:?}"
    );
    let e = SqlServerStore::builder(url)
        .command_timeout(Some(Duration::ZERO))
        .build();
    assert!(
        matches!(
            e,
            Err(Error::Config {
                field: "command_timeout",
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn works_from_inside_an_async_runtime() {
    // Runtime::block_on panics inside another runtime; the store must not.
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let r = outer.block_on(async {
        SqlServerStore::builder("server=tcp:127.0.0.1,1;user=sa;password=x")
            .connect_timeout(Duration::from_secs(2))
            .build()
    });
    assert!(matches!(r, Err(Error::Database { .. })), "{r:?}");
}

#[test]
fn json_cells_decode_bytes_text_and_null() {
    let row = |data: ColumnData<'static>| {
        Row::builder()
            .column("h", tiberius::ColumnType::BigVarBin, data)
            .build()
    };
    let r = row(ColumnData::Binary(Some(b"{\"n\": 1}".to_vec().into())));
    assert_eq!(json_cell(&r, 0), Ok(Some(serde_json::json!({"n": 1}))));
    let r = row(ColumnData::String(Some("{}".into())));
    assert_eq!(json_cell(&r, 0), Ok(Some(serde_json::json!({}))));
    assert_eq!(json_cell(&row(ColumnData::Binary(None)), 0), Ok(None));
    assert!(json_cell(&row(ColumnData::Binary(Some(b"{".to_vec().into()))), 0).is_err());
    assert!(json_cell(&row(ColumnData::I32(Some(1))), 0).is_err());
}

/// A claimed row as the claim's OUTPUT returns it, with these headers and options.
fn claimed_row(id: i64, headers: &'static [u8], options: Option<&'static [u8]>) -> Row {
    use tiberius::ColumnType as T;
    Row::builder()
        .column("id", T::Int8, ColumnData::I64(Some(id)))
        .column(
            "message_id",
            T::Guid,
            ColumnData::Guid(Some(uuid::Uuid::nil())),
        )
        .column(
            "payload",
            T::BigVarBin,
            ColumnData::Binary(Some(b"p".to_vec().into())),
        )
        .column(
            "headers",
            T::BigVarBin,
            ColumnData::Binary(Some(headers.into())),
        )
        .column(
            "options",
            T::BigVarBin,
            ColumnData::Binary(options.map(Into::into)),
        )
        .column("ordering_key", T::NVarchar, ColumnData::String(None))
        .column("attempts", T::Int4, ColumnData::I32(Some(0)))
        .column("created_at", T::Int8, ColumnData::I64(Some(0)))
        .build()
}

#[test]
fn bad_json_rows_are_undecodable_not_errors() {
    let good = decode(&claimed_row(1, b"{\"a\": \"b\"}", None)).expect("id");
    assert_eq!(good.map(|m| m.headers["a"].clone()), Ok("b".to_string()));
    for (headers, options, column) in [
        (&b"[]"[..], None, "headers: must be a JSON object"),
        (b"\"x\"", None, "headers: must be a JSON object"),
        (b"1", None, "headers: must be a JSON object"),
        (b"{bad", None, "headers: invalid JSON"),
        (b"{}", Some(&b"[]"[..]), "options: must be a JSON object"),
    ] {
        match decode(&claimed_row(7, headers, options)) {
            Ok(Err(Undecodable { id: 7, reason })) => {
                assert!(reason.starts_with(column), "{reason}")
            }
            other => panic!("{headers:?}: {other:?}"),
        }
    }
}

/// A file that passes `Tls::check_files` (a PEM label; tiberius reads it only at
/// connect).
fn pem_file(name: &str, label: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("outboxer-{}-{name}", std::process::id()));
    let body = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
    std::fs::write(&path, body).expect("temp file");
    path
}

fn ado(extra: &str) -> tiberius::Config {
    tiberius::Config::from_ado_string(&format!("server=tcp:db,1433;user=sa;password=pw;{extra}"))
        .expect("ADO string")
}

#[test]
fn tls_maps_to_tiberius_settings() {
    let ca = pem_file("ca.pem", "CERTIFICATE");
    let (cert, key) = (
        pem_file("client.pem", "CERTIFICATE"),
        pem_file("client.key", "PRIVATE KEY"),
    );
    // Verify-full with a CA: Required, the CA added, no bypass.
    let mut c = ado("");
    apply_tls(&mut c, &Tls::verify_full().ca_file(&ca)).expect("verify-full");
    let shown = format!("{c:?}");
    assert!(shown.contains("encryption: Required"), "{shown}");
    assert!(shown.contains(&format!("File({:?})", ca)), "{shown}");
    assert!(shown.contains("bypass: false"), "{shown}");
    assert!(shown.contains("client_cert: None"), "{shown}");
    // A client certificate.
    let mut c = ado("");
    apply_tls(&mut c, &Tls::verify_full().client_cert(&cert, &key)).expect("mutual TLS");
    assert!(format!("{c:?}").contains("CertAndKey"), "{c:?}");
    // The danger switch is trust_cert(), and only it.
    let mut c = ado("encrypt=false");
    let danger = Tls::verify_full().danger_accept_invalid_certificates(true);
    apply_tls(&mut c, &danger).expect("danger");
    let shown = format!("{c:?}");
    assert!(shown.contains("encryption: Required") && shown.contains("bypass: true"));
    // Disabled: plaintext.
    let mut c = ado("");
    apply_tls(&mut c, &Tls::disabled()).expect("disabled");
    assert!(format!("{c:?}").contains("encryption: NotSupported"));
}

#[test]
fn tls_refusals_are_config_errors_never_panics() {
    let ca = pem_file("ca2.pem", "CERTIFICATE");
    let refused = |mut c: tiberius::Config, tls: Tls| match apply_tls(&mut c, &tls) {
        Err(Error::Config { field: "tls", .. }) => {}
        other => panic!("{tls:?}: {other:?}"),
    };
    refused(ado(""), Tls::verify_ca().ca_file(&ca));
    refused(ado(""), Tls::verify_full().ca_file("/nonexistent/ca.pem"));
    // Trust set twice (tiberius panics when trust_cert and trust_cert_ca mix).
    refused(
        ado("TrustServerCertificate=true"),
        Tls::verify_full().ca_file(&ca),
    );
    refused(
        ado(&format!("TrustServerCertificateCA={}", ca.display())),
        Tls::verify_full().danger_accept_invalid_certificates(true),
    );
    // Through the builder, before any connection.
    let e = SqlServerStore::builder("server=tcp:127.0.0.1,1;user=sa;password=x")
        .tls(Tls::verify_ca())
        .build();
    assert!(
        matches!(e, Err(Error::Config { field: "tls", .. })),
        "{e:?}"
    );
}

#[test]
fn ado_strings_with_a_ca_keep_working() {
    let ca = pem_file("ca3.pem", "CERTIFICATE");
    let c = ado(&format!(
        "Encrypt=true;TrustServerCertificateCA={}",
        ca.display()
    ));
    let shown = format!("{c:?}");
    assert!(shown.contains("encryption: Required"), "{shown}");
    assert!(
        shown.contains("bypass: false") && shown.contains("File("),
        "{shown}"
    );
}
