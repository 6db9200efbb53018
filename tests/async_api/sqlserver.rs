//! SQL Server through the async API: no server can be installed here, so only
//! what needs none (errors, the API's types); see the README.

use outboxer::async_impl::store::{SqlServerClient, SqlServerStore};
use outboxer::async_impl::Outbox;
use outboxer::{Error, Message};

#[tokio::test]
async fn unreachable_server_is_a_typed_error() {
    let r = SqlServerStore::connect(
        "server=tcp:127.0.0.1,1;user=sa;password=secret;TrustServerCertificate=true",
    )
    .await;
    match r {
        Err(e @ Error::Database { .. }) => assert!(!format!("{e:?}").contains("secret")),
        other => panic!("{other:?}"),
    }
}

/// The caller's transaction is their own tiberius client inside `BEGIN TRAN`;
/// compiled, not run.
#[allow(dead_code)]
async fn api_shape(
    outbox: Outbox<SqlServerStore>,
    mut client: SqlServerClient,
) -> Result<(), Box<dyn std::error::Error>> {
    client
        .simple_query("BEGIN TRAN")
        .await?
        .into_results()
        .await?;
    outbox
        .send_within_tx(&mut client, Message::new(b"x".to_vec()))
        .await?;
    client
        .simple_query("COMMIT TRAN")
        .await?
        .into_results()
        .await?;
    outbox
        .transaction(async |tx| {
            tx.tx()
                .execute("UPDATE t SET x = 1", &[])
                .await
                .map_err(|e| Error::Rejected(e.to_string()))?;
            tx.send(Message::new(b"y".to_vec())).await
        })
        .await?;
    Ok(())
}
