//! Connections: the store's private current-thread runtime, the pool, opening a
//! client (TCP_NODELAY, Azure SQL's redirect), and one pooled connection's requests.

use super::*;

impl SqlServerStore {
    pub(super) fn conn(&self) -> Result<Conn<'_>> {
        let pooled = self.inner.idle.lock().pop();
        let client = match pooled {
            Some(c) => c,
            None => self.inner.open(self.inner.config.clone())?,
        };
        Ok(Conn {
            inner: &self.inner,
            client: Some(client),
            broken: false,
            pooled: true,
        })
    }

    /// The connection settings (the async store opens its own connections).
    #[cfg(feature = "async")]
    pub(crate) fn config(&self) -> (tiberius::Config, Duration) {
        (self.inner.config.clone(), self.inner.connect_timeout)
    }
}

impl Inner {
    /// Runs `f` to completion on the store's runtime.
    ///
    /// A current-thread runtime's `block_on` may be called from several threads at
    /// once (tokio documents it: the first caller drives the I/O and timer drivers,
    /// the others are woken by it and take the drivers over when it returns), so one
    /// runtime serves every thread that shares the store. `block_on` panics on a
    /// thread that is inside a runtime already; such calls run on a scoped thread.
    pub(super) fn block_on<F>(&self, f: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(rt) = self.runtime.as_ref() else {
            return Err(Error::db(
                "running a statement",
                "the store is shutting down",
            ));
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(rt.block_on(f));
        }
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("outboxer-sqlserver-call".into())
                .spawn_scoped(s, || rt.block_on(f))
                .map_err(|e| Error::db("starting a driver thread", e))?;
            handle
                .join()
                .map_err(|_| Error::db("running a statement", "the SQL Server driver panicked"))
        })
    }

    /// Opens a connection (following an Azure SQL redirect) and sets the session up.
    pub(super) fn open(&self, config: tiberius::Config) -> Result<Client> {
        let timeout = self.connect_timeout;
        let setup = self.sql.session_setup;
        let r = self.block_on(async move {
            tokio::time::timeout(timeout, async move {
                let mut client = open_client(config).await?;
                client.simple_query(setup).await?.into_results().await?;
                Ok::<_, tiberius::error::Error>(client)
            })
            .await
        })?;
        match r {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(Error::tls_from("sqlserver", &e)
                .unwrap_or_else(|| Error::db("connecting to SQL Server", e))),
            Err(_) => Err(Error::db(
                "connecting to SQL Server",
                format!("no connection within {timeout:?} (connect_timeout)"),
            )),
        }
    }
}

pub(super) async fn tcp(addr: String) -> TdsResult<Compat<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp.compat_write())
}

pub(crate) async fn open_client(config: tiberius::Config) -> TdsResult<Client> {
    let stream = tcp(config.get_addr()).await?;
    match Client::connect(config.clone(), stream).await {
        // Azure SQL's gateway may send the client to another node.
        Err(tiberius::error::Error::Routing { host, port }) => {
            let mut config = config;
            config.host(&host);
            config.port(port);
            let stream = tcp(config.get_addr()).await?;
            Client::connect(config, stream).await
        }
        other => other,
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Connections first (they are registered with the runtime's I/O driver), then
        // the runtime, without waiting: `shutdown_background` never blocks, so a store
        // can be dropped anywhere, even inside an async task.
        self.idle.get_mut().clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A connection taken from the pool; back to it on drop unless a request on it
/// failed (after an error the connection may be mid-response or inside a
/// transaction: closing it makes the server roll back whatever was open).
pub(super) struct Conn<'a> {
    pub(super) inner: &'a Inner,
    pub(super) client: Option<Client>,
    pub(super) broken: bool,
    pub(super) pooled: bool,
}

impl Conn<'_> {
    pub(super) fn client(&mut self, ctx: &'static str) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| Error::db(ctx, "the connection was closed"))
    }

    pub(super) fn finish<T>(&mut self, ctx: &'static str, r: Result<TdsResult<T>>) -> Result<T> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.broken = true;
                Err(Error::db(ctx, e))
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// A plain SQL batch (no parameters, not wrapped in `sp_executesql`).
    pub(super) fn batch(&mut self, ctx: &'static str, sql: &'static str) -> Result<()> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move {
            client.simple_query(sql).await?.into_results().await?;
            Ok(())
        });
        self.finish(ctx, r)
    }

    /// A parameterised request; rows changed.
    pub(super) fn exec(&mut self, ctx: &'static str, query: Query<'_>) -> Result<u64> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { Ok(query.execute(client).await?.total()) });
        self.finish(ctx, r)
    }

    /// A parameterised request; the rows of its first result set.
    pub(super) fn rows(&mut self, ctx: &'static str, query: Query<'_>) -> Result<Vec<Row>> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { query.query(client).await?.into_first_result().await });
        self.finish(ctx, r)
    }

    pub(super) fn exec_dyn(
        &mut self,
        ctx: &'static str,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<u64> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner.block_on(async move { Ok(client.execute(sql, params).await?.total()) });
        self.finish(ctx, r)
    }

    pub(super) fn rows_dyn(
        &mut self,
        ctx: &'static str,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<Vec<Row>> {
        let inner = self.inner;
        let client = self.client(ctx)?;
        let r = inner
            .block_on(async move { client.query(sql, params).await?.into_first_result().await });
        self.finish(ctx, r)
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if self.pooled && !self.broken {
                let mut idle = self.inner.idle.lock();
                if idle.len() < self.inner.max_idle {
                    idle.push(c);
                }
            }
        }
    }
}
