//! Generated protobuf and gRPC code for `notigate.v1`, and the descriptor set
//! that server reflection serves.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

tonic::include_proto!("notigate.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("notigate_descriptor");
