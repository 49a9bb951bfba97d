//! `notigate.v1.ConnectionAdmin`: create, read, change, test and delete
//! connections.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{connection_from_pb, connection_to_pb, versioned_to_pb},
    decode_page_token, encode_page_token, invalid, invalid_field, mask, page_size,
};
use crate::{
    dispatch::Dispatcher,
    domain::{Connection, ConnectionName, Violations},
    pb::{self, connection_admin_server::ConnectionAdmin},
    store::Store,
};

pub struct AdminService {
    store: Arc<Store>,
    dispatcher: Arc<Dispatcher>,
}

impl AdminService {
    pub fn new(store: Arc<Store>, dispatcher: Arc<Dispatcher>) -> Self {
        Self { store, dispatcher }
    }
}

fn parse_name(field: &str, name: &str) -> Result<ConnectionName, Status> {
    ConnectionName::parse(name).map_err(|e| invalid_field(field, e))
}

fn check_credentials(c: &Connection) -> Result<(), Violations> {
    let mut v = Violations::default();
    if let Err((field, e)) = c.backend.check_credentials() {
        v.add(format!("connection.{field}"), e);
    }
    v.into_result(|| ())
}

#[tonic::async_trait]
impl ConnectionAdmin for AdminService {
    async fn create_connection(
        &self,
        request: Request<pb::CreateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let wire = request
            .into_inner()
            .connection
            .ok_or_else(|| invalid_field("connection", "is required"))?;
        let connection = connection_from_pb(&wire, "connection").map_err(invalid)?;
        check_credentials(&connection).map_err(invalid)?;
        let created = self.store.create_connection(connection).await?;
        tracing::info!(connection = %created.connection.name, backend = created.connection.backend.kind(), "connection created");
        Ok(Response::new(versioned_to_pb(&created)))
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let name = parse_name("name", &request.into_inner().name)?;
        let found = self.store.get_connection(name.as_str())?;
        Ok(Response::new(versioned_to_pb(&found)))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let after = decode_page_token(&request.page_token)?;
        let (page, more) = self.store.list_connections(after.as_deref(), limit)?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => encode_page_token(last.connection.name.as_str()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: page.iter().map(versioned_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_connection(
        &self,
        request: Request<pb::UpdateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let request = request.into_inner();
        let wire = request
            .connection
            .ok_or_else(|| invalid_field("connection", "is required"))?;
        let name = parse_name("connection.name", &wire.name)?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let outcome = self
            .store
            .update_connection(name.as_str(), Some(&wire.etag), |current| {
                let current_wire = connection_to_pb(&current.connection);
                let resolved = mask::resolve(&paths, &wire, &current_wire).map_err(|e| {
                    let mut v = Violations::default();
                    v.add("update_mask.paths", e);
                    v
                })?;
                let mut merged = current_wire;
                mask::apply(&mut merged, &wire, &resolved);
                let mut updated = connection_from_pb(&merged, "connection")?;
                // A stored password survives unless the mask replaces it with a
                // non-empty one, the backend changes kind, or auth no longer
                // uses one.
                let kind = updated.backend.kind();
                let replaced =
                    mask::covers_password(&resolved, kind) && updated.backend.password().is_some();
                if !updated.backend.uses_password() {
                    updated.backend.set_password(None);
                } else if !replaced && current.connection.backend.kind() == kind {
                    updated
                        .backend
                        .set_password(current.connection.backend.password().cloned());
                }
                check_credentials(&updated)?;
                Ok(updated)
            })
            .await?;
        let updated = outcome.map_err(invalid)?;
        self.dispatcher
            .connection_changed(updated.connection.name.as_str())
            .await;
        tracing::info!(connection = %updated.connection.name, "connection updated");
        Ok(Response::new(versioned_to_pb(&updated)))
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let name = parse_name("name", &request.name)?;
        let current = self.store.get_connection(name.as_str())?;
        if !request.etag.is_empty() && request.etag != current.etag {
            return Err(Status::aborted(format!(
                "etag {:?} does not match the current etag {:?}: the connection changed since it was read",
                request.etag, current.etag
            )));
        }
        let pending = self.store.pending_of(name.as_str())?;
        if !pending.is_empty() {
            if !request.force {
                return Err(Status::failed_precondition(format!(
                    "connection {name} has {} notifications not yet delivered; \
                     wait for them, cancel them, or delete with force (they end FAILED)",
                    pending.len()
                )));
            }
            self.dispatcher
                .connection_deleted(&current.connection, &pending)
                .await?;
        }
        self.store
            .delete_connection(name.as_str(), Some(&request.etag))
            .await?;
        self.dispatcher.connection_changed(name.as_str()).await;
        tracing::info!(connection = %name, "connection deleted");
        Ok(Response::new(()))
    }

    async fn test_connection(
        &self,
        request: Request<pb::TestConnectionRequest>,
    ) -> Result<Response<pb::TestConnectionResponse>, Status> {
        use pb::test_connection_request::Target;
        let connection = match request.into_inner().target {
            None => {
                return Err(invalid_field(
                    "target",
                    "is required: set `name` (a saved connection) or `connection` (unsaved settings)",
                ));
            }
            Some(Target::Name(name)) => {
                let name = parse_name("name", &name)?;
                self.store.get_connection(name.as_str())?.connection
            }
            Some(Target::Connection(wire)) => {
                let mut connection = connection_from_pb(&wire, "connection").map_err(invalid)?;
                if connection.backend.password().is_none()
                    && connection.backend.uses_password()
                    && let Ok(saved) = self.store.get_connection(connection.name.as_str())
                    && saved.connection.backend.kind() == connection.backend.kind()
                {
                    connection
                        .backend
                        .set_password(saved.connection.backend.password().cloned());
                }
                check_credentials(&connection).map_err(invalid)?;
                connection
            }
        };
        let started = std::time::Instant::now();
        let report = self
            .dispatcher
            .backends()
            .for_connection(&connection)
            .test(&connection)
            .await;
        Ok(Response::new(pb::TestConnectionResponse {
            ok: report.ok,
            stage: report.stage.to_owned(),
            detail: report.detail,
            latency: prost_types::Duration::try_from(started.elapsed()).ok(),
        }))
    }
}
