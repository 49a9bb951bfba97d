//! Starting and stopping the gateway: open the store, bind, serve the gRPC
//! services with health and reflection, and drain on shutdown.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    api::AdminService,
    config::Config,
    pb::{self, connection_admin_server::ConnectionAdminServer},
    store::Store,
};

const ADMIN_SERVICE: &str = "notigate.v1.ConnectionAdmin";

/// Reflection serves our services, health, and google.rpc error details (so
/// that grpcurl can print the `BadRequest` of an error).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Runs the gateway until `shutdown` completes, then drains in-flight calls,
/// flushes the store and returns.
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
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", ADMIN_SERVICE] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tracing::info!(data_dir = %config.data_dir.display(), "listening on {addr}");
    let draining = health.clone();
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ConnectionAdminServer::new(AdminService::new(store.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight calls");
            for service in ["", ADMIN_SERVICE] {
                draining
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        })
        .await
        .context("gRPC server failed")?;
    store
        .flush_now()
        .context("flushing the database at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}
