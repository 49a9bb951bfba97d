//! Starting and stopping the gateway: open the store, recover the outbox,
//! bind, serve the gRPC services with health and reflection, and drain on
//! shutdown.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::ServingStatus;

use crate::{
    api::{AdminService, NotifierService},
    auth::{Role, Tokens},
    backend::{
        exchange::ExchangeBackend,
        smtp::{PoolConfig, SmtpBackend},
    },
    config::{Config, TlsFiles},
    connlog::ConnectionLogs,
    dispatch::{Backends, Dispatcher},
    metrics::{GrpcMetricsLayer, Metrics},
    pb::{self, connection_admin_server::ConnectionAdminServer, notifier_server::NotifierServer},
    store::Store,
};

const SERVICES: [&str; 3] = ["", "notigate.v1.ConnectionAdmin", "notigate.v1.Notifier"];
/// How long a draining server waits for open calls (streams such as
/// Health/Watch never end on their own) before it stops anyway.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reflection serves our services, health, and google.rpc error details (so
/// that grpcurl can print the `BadRequest` of an error).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

fn backends(config: &Config) -> Backends {
    // Keep as many sessions as may be busy at once: a smaller pool closes
    // and reopens sessions under load.
    let pool = PoolConfig {
        max_idle_per_connection: config.dispatch.connection_concurrency.max(1),
        ..PoolConfig::default()
    };
    Backends {
        smtp: Arc::new(SmtpBackend::with_pool_config(pool)),
        exchange: Arc::new(ExchangeBackend::new()),
    }
}

fn tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &std::path::PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let identity = Identity::from_pem(
        read(&files.cert, "--tls-cert")?,
        read(&files.key, "--tls-key")?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "--client-ca")?));
    }
    Ok(tls)
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on
/// listeners it binds itself, and with Nagle's algorithm a response written
/// in more than one piece waits for the client's delayed ACK (40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
}

/// Runs the gateway until `shutdown` completes, then drains: health turns
/// NOT_SERVING, no new calls are accepted, calls and deliveries in flight
/// get to finish (deliveries within the grace period), the store is flushed.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let opened = Store::open(&config.data_dir, &config.master_key)?;
    if let Some(path) = &opened.generated_key {
        tracing::warn!(
            path = %path.display(),
            "generated a new master key for sealing passwords; back it up, or pass --master-key-file / NOTIGATE_MASTER_KEY"
        );
    }
    let store = Arc::new(opened.store);
    let logs = Arc::new(
        ConnectionLogs::new(&config.log_dir, config.log_keep_days).with_context(|| {
            format!(
                "cannot create the log directory {}",
                config.log_dir.display()
            )
        })?,
    );
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Dispatcher::new(
        store.clone(),
        logs,
        metrics.clone(),
        backends(&config),
        config.dispatch.clone(),
    );
    let recovered = dispatcher.recover().context("loading the outbox")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    if let Some(metrics_addr) = config.metrics_listen {
        let d = dispatcher.clone();
        let bound = crate::metrics::serve(
            metrics_addr,
            metrics.clone(),
            Arc::new(move || d.refresh_gauges()),
        )
        .await
        .with_context(|| format!("cannot listen for metrics on {metrics_addr}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatching = tokio::spawn(dispatcher.clone().run(stop_rx));

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let tokens = match &config.tokens_file {
        Some(path) => {
            let t = Tokens::load(path)?;
            tracing::info!(tokens = t.len(), path = %path.display(), "bearer tokens required");
            Some(t)
        }
        None => {
            tracing::info!(
                "no --tokens-file: every caller is trusted, so only a loopback address may be served"
            );
            None
        }
    };
    let guard = |role: Role| {
        let tokens = tokens.clone();
        move |request: tonic::Request<()>| {
            if let Some(t) = &tokens {
                t.check(&request, role)?;
            }
            Ok(request)
        }
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let admin = InterceptedService::new(
        ConnectionAdminServer::new(AdminService::new(store.clone(), dispatcher.clone())),
        guard(Role::Admin),
    );
    let (drain_tx, drain_rx) = watch::channel(false);
    let notifier = InterceptedService::new(
        NotifierServer::new(NotifierService::new(
            store.clone(),
            dispatcher.clone(),
            config.send.clone(),
            drain_rx,
        ))
        .max_decoding_message_size(config.grpc_max_message_size),
        guard(Role::Sender),
    );

    tracing::info!(data_dir = %config.data_dir.display(), pending = recovered, "listening on {addr}");
    let draining = health.clone();
    let drain_started = Arc::new(tokio::sync::Notify::new());
    let drain_started_tx = drain_started.clone();
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("configuring TLS on the gRPC listener")?;
        tracing::info!(mutual = tls.client_ca.is_some(), "TLS on the gRPC listener");
    }
    let server = builder
        .layer(GrpcMetricsLayer(metrics.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(notifier)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight calls");
            for service in SERVICES {
                draining
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            // End waits and watch streams, which would hold the drain open.
            let _ = drain_tx.send(true);
            drain_started_tx.notify_one();
        });
    tokio::select! {
        result = server => result.context("gRPC server failed")?,
        _ = async {
            drain_started.notified().await;
            tokio::time::sleep(DRAIN_GRACE).await;
        } => {
            tracing::warn!(grace = ?DRAIN_GRACE, "calls still open after the drain grace period; closing them");
        }
    }
    let _ = stop_tx.send(true);
    let _ = dispatching.await;
    store
        .flush_now()
        .context("flushing the database at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}
